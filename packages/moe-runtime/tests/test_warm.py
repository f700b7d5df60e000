"""Warm start: the resident set is saved on close and prefetched on the next start; a corrupt or
mismatched file means a cold start with one warning and the same answers."""

from __future__ import annotations

import json
import threading
import warnings

import pytest

from moe_runtime import Session, WarmStartWarning

MESSAGES = [{"role": "user", "content": "hello how are you today"}]


def start(path, cache_dir, capacity=6):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = Session(path, capacity=capacity, cache_dir=cache_dir)
    return session, [w for w in caught if issubclass(w.category, WarmStartWarning)]


@pytest.fixture(scope="module")
def want(ref, checkpoint):
    return ref.tokens(checkpoint("qwen3_moe"), MESSAGES, 10)


def test_second_start_is_warm_and_answers_the_same(ref, checkpoint, want, tmp_path):
    path = checkpoint("qwen3_moe")
    first, warned = start(path, tmp_path)
    assert not warned and first.stats()["session"]["warm_start"]["restored"] is False
    assert ref.run(first, MESSAGES, 10) == want
    first.close()
    files = list((tmp_path / "warm").glob("*.json"))
    assert [f.name for f in files] == [f"{first.fingerprint}.json"]
    counts = json.loads(files[0].read_text())["counts"]
    # 4 choices per layer for every token fed: the prompt and the 10 generated (mlx-lm feeds
    # the last one too, computing a token ahead).
    prompt = len(first.encode_prompt(MESSAGES))
    assert [sum(c) for c in counts] == [4 * (prompt + 10)] * 4

    second, warned = start(path, tmp_path)
    with second:
        warm = second.stats()["session"]["warm_start"]
        assert not warned and warm["restored"] is True and warm["prefetched"] > 0
        for layer, resident in enumerate(second.handle.resident()):
            used = [c for c in counts[layer] if c > 0]
            assert len(resident) == min(6, len(used))
            # Every expert chosen more often than the 6th most chosen one is loaded.
            sixth = sorted(counts[layer], reverse=True)[5]
            assert {e for e, c in enumerate(counts[layer]) if c > sixth} <= resident
        assert ref.run(second, MESSAGES, 10) == want
    # Counts carry over, the older half-weighted.
    again = json.loads(files[0].read_text())["counts"]
    assert [sum(c) for c in again] > [sum(c) for c in counts]


def _saved(path, tmp_path):
    session, _ = start(path, tmp_path)
    session.close()
    return next((tmp_path / "warm").glob("*.json"))


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "versions",
        "fingerprint",
        "expert_out_of_range",
        "too_many",
        "negative_count",
        "counts_short",
        "recent_out_of_range",
        "unknown_policy",
    ],
)
def test_bad_state_means_a_cold_start_and_one_warning(ref, checkpoint, want, tmp_path, damage):
    path = checkpoint("qwen3_moe")
    state = _saved(path, tmp_path)
    data = json.loads(state.read_text())
    if damage == "garbage":
        state.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        state.write_text(state.read_text()[:40])
    else:
        if damage == "versions":
            data["key"]["versions"]["mlx-lm"] = "0.0.1"
        elif damage == "fingerprint":
            data["key"]["fingerprint"] = "0" * 16
        elif damage == "expert_out_of_range":
            data["resident"][0] = [999]
        elif damage == "negative_count":
            data["counts"][2][0] = -1
        elif damage == "counts_short":
            data["counts"][3] = data["counts"][3][:-1]
        elif damage == "recent_out_of_range":
            data["recent"][1] = [[99]]
        elif damage == "unknown_policy":
            data["policy"] = "nope"
        else:
            data["resident"][1] = list(range(16))
        state.write_text(json.dumps(data))
    session, warned = start(path, tmp_path)
    with session:
        assert len(warned) == 1
        assert str(state) in str(warned[0].message) and "starting cold" in str(warned[0].message)
        assert session.stats()["session"]["warm_start"]["restored"] is False
        assert ref.run(session, MESSAGES, 10) == want


def test_another_capacity_is_a_mismatch(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    _saved(path, tmp_path)
    session, warned = start(path, tmp_path, capacity=7)
    session.close()
    assert len(warned) == 1 and "capacity differ" in str(warned[0].message)
    # Closing saved a state for the new capacity: the next start with it is warm again.
    again, warned = start(path, tmp_path, capacity=7)
    with again:
        assert not warned and again.stats()["session"]["warm_start"]["restored"]


def test_state_is_written_atomically(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    state = _saved(path, tmp_path)
    leftovers = [p for p in state.parent.iterdir() if p != state]
    assert leftovers == []
    assert json.loads(state.read_text())["format"] == 3


def test_closing_on_another_thread_saves_the_warm_state(checkpoint, tmp_path):
    """A server generates on its worker thread and closes the session on the main thread; with
    every expert resident, layers count on the device, and those counts are saved all the same."""
    path = checkpoint("qwen3_moe")
    session, _ = start(path, tmp_path, capacity=16)
    worker = threading.Thread(target=session.generate, args=(MESSAGES,), kwargs={"max_tokens": 8})
    worker.start()
    worker.join()
    session.close()
    counts = json.loads(next((tmp_path / "warm").glob("*.json")).read_text())["counts"]
    prompt = len(session.encode_prompt(MESSAGES))
    assert [sum(c) for c in counts] == [4 * (prompt + 8)] * 4


def test_a_profiler_and_warm_start_count_side_by_side(checkpoint, tmp_path):
    """A trace recorder attached to a session no longer displaces warm start's counter."""
    import moe_profiles

    path = checkpoint("qwen3_moe")
    session, _ = start(path, tmp_path)
    recorder = moe_profiles.TraceRecorder.attach(
        session.handle, fingerprint=session.fingerprint, top_k=4
    )
    session.generate(MESSAGES, max_tokens=8)
    session.close()
    counts = json.loads(next((tmp_path / "warm").glob("*.json")).read_text())["counts"]
    prompt = len(session.encode_prompt(MESSAGES))
    assert [sum(c) for c in counts] == [4 * (prompt + 8)] * 4
    trace = recorder.trace()
    assert [int(c.sum()) for c in trace.counts()] == [4 * (prompt + 8)] * 4


def test_stats_say_where_the_warm_state_is_and_whether_it_was_used(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    first, _ = start(path, tmp_path)
    warm = first.stats()["session"]["warm_start"]
    first.close()
    saved = next((tmp_path / "warm").glob("*.json"))
    assert warm["path"] == str(saved) and not warm["restored"]
    second, _ = start(path, tmp_path)
    with second:
        warm = second.stats()["session"]["warm_start"]
        assert warm["path"] == str(saved) and warm["restored"]
    with Session(path, capacity=6, cache_dir=tmp_path, warm_start=False) as off:
        assert off.stats()["session"]["warm_start"] == {
            "enabled": False,
            "path": None,
            "restored": False,
            "prefetched": 0,
        }


def test_the_next_start_chooses_its_policy_on_the_saved_steps(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    first, _ = start(path, tmp_path)
    with first:
        for i in range(4):
            first.generate([{"role": "user", "content": f"count to {i} please"}], max_tokens=40)
        used = first.stats()["policy"]
    data = json.loads(next((tmp_path / "warm").glob("*.json")).read_text())
    assert data["policy"] == used
    assert all(len(steps) >= 96 for steps in data["recent"])
    second, _ = start(path, tmp_path)
    with second:
        chosen = second.stats()["session"]["warm_start"]["selection"]
        assert chosen["before"] == used and second.stats()["policy"] == chosen["policy"]
        assert chosen["accepted"] == (chosen["policy"] != used)
        assert 0 <= chosen["held_out"] <= chosen["held_out_belady"] <= 1
    # A policy given, or a profile, is not second-guessed.
    with Session(path, capacity=6, cache_dir=tmp_path, policy="lru") as third:
        assert third.stats()["policy"] == "lru"
        assert "selection" not in third.stats()["session"]["warm_start"]


def test_choosing_keeps_the_policy_used_unless_another_wins_on_held_out_steps():
    from moe_runtime._warm import WarmState, choose_policy

    # Experts used in a cycle one longer than the slots: LRU evicts the next one every time,
    # the learned policy does not; on noise nothing beats the policy used before.
    cycle = WarmState([[]], None, [[[i % 4] for i in range(300)]], "lru")
    selection = choose_policy(cycle, [3], [6])
    assert selection.accepted and selection.chosen.policy != "lru"
    assert choose_policy(WarmState([[]], None, [[[0]] * 50], "lru"), [3], [6]) is None  # too few
    assert choose_policy(WarmState([[]], None, None, None), [3], [6]) is None  # format 2
