"""Requests decoded together (`Session.open_batch`): each request's tokens and log probabilities
equal running it alone and the unmodified mlx-lm model's, whoever else is in the batch and
whenever it joins or leaves."""

from __future__ import annotations

import mlx.core as mx
import pytest

from moe_runtime import Session

MESSAGES = [{"role": "user", "content": "what is your name"}]
PROMPTS = [
    MESSAGES,
    [1, 40, 41, 42, 43],
    [{"role": "user", "content": "write a long poem about the sea and the wind, please"}],
    [7, 8],
    [{"role": "user", "content": "hi"}],
    list(range(30, 90)),
]


@pytest.fixture(scope="module", params=["qwen3_moe", "qwen3_next"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def session(checkpoint, family, tmp_path_factory):
    with Session(
        checkpoint(family), capacity=6, cache_dir=tmp_path_factory.mktemp("warm"), warm_start=False
    ) as s:
        yield s


def alone(session, prompt, **options):
    return list(session.stream(prompt, **options))


def run(batch, schedule: dict[int, list[tuple]]) -> dict:
    """Add requests at the given steps ({step: [(name, prompt, options)]}) and step until every
    request has finished; each name's responses."""
    out: dict = {}
    names: dict = {}
    step = 0
    while step <= max(schedule) or len(batch):
        for name, prompt, options in schedule.get(step, []):
            names[batch.add(prompt, **options)] = name
            out[name] = []
        for uid, response in batch.step():
            out[names[uid]].append(response)
        step += 1
    return out


def test_greedy_tokens_and_logprobs_equal_alone_and_mlx_lm(ref, checkpoint, family, session):
    path = checkpoint(family)
    limits = [12, 5, 16, 9, 3, 11]
    schedule = {
        0: [(0, PROMPTS[0], {"max_tokens": limits[0]}), (1, PROMPTS[1], {"max_tokens": limits[1]})],
        2: [(2, PROMPTS[2], {"max_tokens": limits[2]})],
        3: [(3, PROMPTS[3], {"max_tokens": limits[3]}), (4, PROMPTS[4], {"max_tokens": limits[4]})],
        7: [(5, PROMPTS[5], {"max_tokens": limits[5]})],  # after request 1 has left
    }
    batched = run(session.open_batch(5), schedule)
    for i, prompt in enumerate(PROMPTS):
        single = alone(session, prompt, max_tokens=limits[i])
        got = [r.token for r in batched[i]]
        assert got == [r.token for r in single], f"request {i}"
        assert got == ref.tokens(path, prompt, limits[i]), f"request {i} against mlx-lm"
        for a, b in zip(batched[i], single, strict=True):
            assert mx.array_equal(a.logprobs, b.logprobs).item(), f"request {i} logprobs"
        assert "".join(r.text for r in batched[i]) == "".join(r.text for r in single)
        assert batched[i][-1].finish_reason == single[-1].finish_reason
        assert [r.finish_reason for r in batched[i][:-1]] == [None] * (len(got) - 1)


def test_sampling_and_processors_are_per_request(session):
    sampled = {"max_tokens": 10, "temperature": 0.9, "top_p": 0.95}
    biased = {"max_tokens": 8, "logit_bias": {45: 30.0}, "repetition_penalty": 1.3}
    penalised = {"max_tokens": 8, "presence_penalty": 1.5, "frequency_penalty": 0.5}
    schedule = {
        0: [("greedy", MESSAGES, {"max_tokens": 10}), ("sampled", PROMPTS[2], sampled)],
        1: [("biased", PROMPTS[1], biased), ("sampled-too", MESSAGES, sampled)],
        2: [("penalised", PROMPTS[4], penalised)],
    }
    batch = session.open_batch(8)
    batched = run(batch, schedule)
    expect = {
        "greedy": alone(session, MESSAGES, max_tokens=10),
        "biased": alone(session, PROMPTS[1], **biased),
        "penalised": alone(session, PROMPTS[4], **penalised),
    }
    for name, responses in expect.items():
        assert [r.token for r in batched[name]] == [r.token for r in responses], name
    assert [r.token for r in batched["biased"]].count(45) >= 4  # the bias did apply
    for name in ("sampled", "sampled-too"):  # drawn, not argmax: their own sampler ran
        assert len(batched[name]) >= 1
    # A seeded sampled request cannot join: its draws would depend on the others'.
    assert batch.alone(**sampled) is None
    assert "seed" in batch.alone(**sampled, seed=3)
    with pytest.raises(ValueError, match="seed"):
        batch.add(MESSAGES, **sampled, seed=3)
    assert batch.alone(max_tokens=4, seed=3) is None  # greedy: the seed changes nothing


def test_stop_strings_and_removal(session):
    full = "".join(r.text for r in alone(session, MESSAGES, max_tokens=24))
    at = next(i for i in range(4, len(full) - 2) if full[i : i + 2].isprintable())
    stop = full[at : at + 2]
    batch = session.open_batch(4)
    ids = {
        batch.add(MESSAGES, max_tokens=24, stop=[stop]): "stopped",
        batch.add(PROMPTS[2], max_tokens=12): "removed",
        batch.add(PROMPTS[1], max_tokens=-1): "unbounded",  # up to the context limit
        batch.add(PROMPTS[3], max_tokens=14): "kept",
    }
    out = {name: [] for name in ids.values()}
    steps = 0
    while len(batch):
        for uid, r in batch.step():
            out[ids[uid]].append(r)
        steps += 1
        if steps == 3:
            removed = next(u for u, n in ids.items() if n == "removed")
            batch.remove(removed)
        if steps == 20:  # the unbounded one would run to max_context: end it too
            batch.remove(next(u for u, n in ids.items() if n == "unbounded"))
    assert "".join(r.text for r in out["stopped"]) == full[: full.find(stop)]
    assert out["stopped"][-1].finish_reason == "stop"
    assert len(out["removed"]) == 3
    assert [r.token for r in out["kept"]] == [
        r.token for r in alone(session, PROMPTS[3], max_tokens=14)
    ]


def test_max_tokens_unbounded_ends_at_the_context(checkpoint, tmp_path):
    """max_tokens=-1: what is left of the context, as alone (a small context keeps it short)."""
    with Session(
        checkpoint("qwen3_moe"), capacity=6, max_context=40, cache_dir=tmp_path, warm_start=False
    ) as s:
        long = [20 + i for i in range(37)]
        batch = s.open_batch(2)
        batch.add(long, max_tokens=-1)
        responses = []
        while len(batch):
            responses += [r for _, r in batch.step()]
        assert [r.token for r in responses] == [r.token for r in s.stream(long, max_tokens=-1)]
        assert len(responses) <= 3 and responses[-1].finish_reason in ("length", "stop")


def test_the_next_turn_reuses_a_batched_request(ref, checkpoint, family, session):
    path = checkpoint(family)
    prompt = session.encode_prompt(PROMPTS[2])
    batch = session.open_batch(2)
    first = batch.add(prompt, max_tokens=6)
    batch.add(PROMPTS[1], max_tokens=3)  # leaves first: its cache is not the one kept
    tokens = []
    while len(batch):
        tokens += [r.token for uid, r in batch.step() if uid == first]
    before = session.stats()["session"]["prefix_tokens_reused"]
    extended = prompt + tokens + [44, 45, 46]
    batch.add(extended, max_tokens=5)
    again = []
    while len(batch):
        again += [r.token for _, r in batch.step()]
    reused = session.stats()["session"]["prefix_tokens_reused"] - before
    if family == "qwen3_moe":  # attention caches carry over; Qwen3-Next's are recomputed
        assert reused == len(prompt) + len(tokens)
    assert again == ref.tokens(path, extended, 5)


def test_a_quantized_kv_cache_does_not_batch(checkpoint, tmp_path):
    with (
        Session(checkpoint("qwen3_moe"), capacity=6, kv_bits=8, cache_dir=tmp_path) as s,
        pytest.raises(ValueError, match="quantized KV cache"),
    ):
        s.open_batch(4)


def test_batches_on_other_threads_share_the_prompt_cache(ref, checkpoint, family, session):
    """A server may start a new worker thread for the same session: the cache a batch left to
    the prompt cache must be usable there (mlx-lm's generation stream is per thread)."""
    import threading

    path = checkpoint(family)
    prompt = session.encode_prompt(MESSAGES)
    out = []

    def decode(tokens):
        batch = session.open_batch(2)
        batch.add(tokens, max_tokens=4)
        got = []
        while len(batch):
            got += [r.token for _, r in batch.step()]
        out.append(got)

    for tokens in (prompt, [*prompt, 44, 45]):
        thread = threading.Thread(target=decode, args=(tokens,))
        thread.start()
        thread.join()
    assert out == [ref.tokens(path, prompt, 4), ref.tokens(path, [*prompt, 44, 45], 4)]
