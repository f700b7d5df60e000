"""Choosing cache settings on a trace's first part, accepted only on its held-out end."""

import json

import numpy as np
import pytest

from moe_profiles import Choice, Profile, Trace, compare_held_out, select, synthetic_trace


def _trace(steps_per_layer: list[list[list[int]]], experts: int, prompts: int = 6) -> Trace:
    total = len(steps_per_layer[0])
    segments = [(f"p{i}", i * total // prompts) for i in range(prompts)]
    from moe_profiles import Segment

    return Trace.from_steps(
        [[np.array([s]) for s in layer] for layer in steps_per_layer],
        [experts] * len(steps_per_layer),
        segments=[Segment(n, (start,) * len(steps_per_layer)) for n, start in segments],
    )


def _cycle(length: int, steps: int, offset: int = 0) -> list[list[int]]:
    return [[offset + i % length] for i in range(steps)]


def test_a_choice_that_wins_on_fit_and_held_out_is_accepted():
    # Experts visited in a cycle one longer than the slots: LRU always evicts the next one, the
    # learned (Markov) policy does not, on both parts alike.
    trace = _trace([_cycle(4, 600)] * 2, 6)  # half of 6 experts: 3 slots
    sel = select(
        trace,
        current=Choice("lru"),
        policies=("lru", "markov"),
        pin_shares=(0.0,),
        fractions=(0.5,),
    )
    assert sel.best.policy == "markov" and sel.accepted and sel.chosen == sel.best
    lru, markov = sel.row(Choice("lru")), sel.row(Choice("markov"))
    assert markov.held_out > lru.held_out
    for row in sel.rows:
        assert row.fit <= row.fit_belady + 1e-9 and row.held_out <= row.held_out_belady + 1e-9


def test_pins_fitted_on_one_topic_are_refused_when_the_topic_changes():
    # Hot experts (every other step) among a stream of cold ones, through 4 slots of FIFO: hot
    # experts are pushed out before they come back, unless pinned. The first two thirds are hot
    # on 0-3, the last third on 4-7: pins fitted on the first part only take slots there.
    def part(hot: int, steps: int) -> list[list[int]]:
        return [[hot + (i // 2) % 4] if i % 2 == 0 else [8 + (i // 2) % 8] for i in range(steps)]

    trace = _trace([part(0, 400) + part(4, 200)] * 2, 16)
    current = Choice("fifo")
    sel = select(trace, current=current, policies=("fifo",), fractions=(0.25,))
    pinned = sel.row(Choice("fifo", False, 0.5))
    assert pinned.fit > sel.row(current).fit + 0.1  # pinning wins where it was fitted ...
    assert pinned.held_out <= sel.row(current).held_out  # ... not on what it was not fitted on
    assert sel.best.pin_share > 0 and not sel.accepted and sel.chosen == current


def test_nothing_better_on_held_out_keeps_the_current_choice():
    trace = synthetic_trace(2, 16, 2, 300, 1.0, 3, 6)
    current = Choice("lfuda")
    sel = select(trace, current=current, policies=("lfuda",), pin_shares=(0.0,), margin=1.0)
    assert not sel.accepted and sel.chosen == current
    doc = json.loads(json.dumps(sel.as_json()))
    assert doc["chosen"] == {"policy": "lfuda", "spread": False, "pin_share": 0.0}
    assert {r["policy"] for r in doc["rows"]} == {"lfuda"}


def test_held_out_comparison_splits_the_trace():
    trace = synthetic_trace(2, 16, 2, 300, 1.0, 4, 6)
    (row,) = compare_held_out(trace, [8], ["lru"])
    fit, test = trace.split(1 / 3)
    assert (row["fit_steps"], row["held_out_steps"]) == (fit.num_steps, test.num_steps)
    assert row["held_out_ratio"] == pytest.approx(
        row["held_out_hit_rate"] / row["held_out_belady_hit_rate"]
    )


def test_a_profile_holds_the_settings_its_trace_chose():
    trace = _trace([_cycle(4, 600)] * 2, 6)
    profile = Profile.from_trace(trace, points=4)
    selection = profile.source["selection"]
    assert profile.policy == selection["chosen"]["policy"]
    assert profile.spread_slots == selection["chosen"]["spread"]
    assert profile.pin_share == selection["chosen"]["pin_share"]
    assert Profile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    # Without a selection, the behaviour of profiles made before it: spread, pin up to half.
    legacy = Profile.from_trace(trace, points=4, choose=False)
    assert legacy.spread_slots and legacy.pin_share == 0.5 and "selection" not in legacy.source


def test_pin_share_caps_what_a_profile_pins():
    trace = synthetic_trace(2, 16, 2, 300, 1.5, 0, 6)
    profile = Profile.from_trace(trace, points=4, choose=False)
    full = profile.pinned_for([8, 8])
    quarter = Profile.from_json({**profile.to_json(), "pin_share": 0.25}).pinned_for([8, 8])
    assert any(len(ids) > 2 for ids in full.values())
    assert all(len(ids) <= 2 for ids in quarter.values())
    with pytest.raises(Exception, match="pin_share"):
        Profile.from_json({**profile.to_json(), "pin_share": 0.9})
