"""KV quantization, stop strings, cancellation, prompt forms and model resolution."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.models.cache import QuantizedKVCache
from mlx_lm.sample_utils import make_logits_processors

from moe_runtime import ModelNotFoundError, Session, stream_generate
from moe_runtime._stops import StopText

MESSAGES = [{"role": "user", "content": "what is your name"}]


@pytest.fixture(scope="module")
def session(checkpoint, tmp_path_factory):
    with Session(
        checkpoint("qwen3_moe"), capacity=6, cache_dir=tmp_path_factory.mktemp("warm")
    ) as s:
        yield s


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen3_next"])
@pytest.mark.parametrize("bits", [4, 8])
def test_kv_quantization_generates(checkpoint, tmp_path, family, bits):
    path = checkpoint(family)
    with Session(path, capacity=6, kv_bits=bits, cache_dir=tmp_path) as s:
        responses = list(s.stream([1, 40, 41, 42, 43], max_tokens=12))
        assert responses[-1].generation_tokens == len(responses)
        if responses[-1].finish_reason == "length":
            assert len(responses) == 12
        kinds = {type(c) for c in s._cache.cache}
        assert QuantizedKVCache in kinds
        assert s.kv.kv_bits == bits
        # A follow-up turn reuses the quantized cache.
        more = [1, 40, 41, 42, 43] + [r.token for r in responses] + [44]
        assert len(list(s.stream(more, max_tokens=4))) >= 1
        assert s.stats()["session"]["prefix_tokens_reused"] > 0


def test_kv_bits_shrink_the_reserve(checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    sizes = {}
    for bits in (None, 8, 4):
        with Session(path, capacity=6, kv_bits=bits, cache_dir=tmp_path, warm_start=False) as s:
            sizes[bits] = s.kv.bytes_per_token
    assert sizes[None] > sizes[8] > sizes[4] > 0


def test_stop_string_ends_generation_and_is_not_emitted(session):
    full = session.generate(MESSAGES, max_tokens=24)
    printable = [i for i in range(4, len(full) - 2) if full[i : i + 2].isprintable()]
    assert printable, f"no printable stop candidate in {full!r}"
    stop = full[printable[0] : printable[0] + 2]
    responses = list(session.stream(MESSAGES, max_tokens=24, stop=[stop, "never-there"]))
    assert "".join(r.text for r in responses) == full[: full.find(stop)]
    assert responses[-1].finish_reason == "stop"
    assert len(responses) < 24
    # The session is still consistent afterwards.
    assert session.generate(MESSAGES, max_tokens=24) == full


def test_cancelled_stream_leaves_a_usable_session(ref, checkpoint, session):
    path = checkpoint("qwen3_moe")
    want = ref.tokens(path, MESSAGES, 10)
    stream = session.stream(MESSAGES, max_tokens=10)
    got = [next(stream).token for _ in range(3)]
    stream.close()
    assert got == want[:3]
    prompt = session.encode_prompt(MESSAGES)
    assert session._cache.tokens == prompt + got  # the cache holds exactly what was processed
    assert session.stats()["session"]["cancelled"] >= 1
    assert ref.run(session, MESSAGES, 10) == want
    # Continue from the cancelled state with token ids: reuses it and matches stock mlx-lm.
    extended = prompt + got + [44, 45]
    stream = session.stream(prompt + got[:2], max_tokens=10)
    next(stream)
    second = session.stream(extended, max_tokens=6)  # starting a new stream ends the old one
    assert [r.token for r in second] == ref.tokens(path, extended, 6)


def test_prompt_forms_agree(session):
    tokens = session.encode_prompt(MESSAGES)
    text = session.tokenizer.decode(tokens)
    assert session.generate(tokens, max_tokens=6) == session.generate(MESSAGES, max_tokens=6)
    assert session.encode_prompt(text) == tokens
    with pytest.raises(ValueError, match="vocabulary"):
        session.generate([1, 10**6])
    with pytest.raises(ValueError, match="prompt must be"):
        session.generate([])
    with pytest.raises(ValueError, match="max_tokens"):
        session.generate(tokens, max_tokens=0)
    with pytest.raises(ValueError, match="max_context"):
        session.generate([1] * 5000)


def test_one_shot_stream_generate(ref, checkpoint, tmp_path):
    path = checkpoint("qwen3_moe")
    responses = list(stream_generate(path, MESSAGES, max_tokens=5, cache_dir=tmp_path))
    prompt = ref.model(path)[1].apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert 1 <= len(responses) <= 5 and responses[-1].finish_reason in ("stop", "length")
    assert all(r.finish_reason is None for r in responses[:-1])
    assert [r.generation_tokens for r in responses] == list(range(1, len(responses) + 1))
    assert all(r.prompt_tokens == len(prompt) for r in responses)  # the whole templated prompt
    assert [r.token for r in responses] == ref.tokens(path, MESSAGES, 5)


def test_closed_session_refuses(checkpoint, tmp_path):
    s = Session(checkpoint("qwen3_moe"), capacity=6, cache_dir=tmp_path)
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.generate("hello")


def test_hub_name_not_available_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="could not be fetched from the Hugging Face Hub"):
        Session("nonexistent-org/nonexistent-model", cache_dir=tmp_path)


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        Session(str(tmp_path / "nope" / "deeper" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        Session(tmp_path / "empty")


@pytest.mark.parametrize(
    ("pieces", "stops", "want"),
    [
        (["ab", "c<", "/s", "top>x"], ["</stop>"], ("abc", True)),
        (["hello ", "wor", "ld"], ["xyz"], ("hello world", False)),
        (["a", "b"], ["bc"], ("a", False)),  # "b" held back: it may begin "bc"
        (["one END two"], ["END", "one"], ("", True)),  # the earliest stop wins
    ],
)
def test_stop_text(pieces, stops, want):
    stop = StopText(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = stop.feed(piece)
        out += text
        if hit:
            break
    assert (out, hit) == want


def test_penalties_and_logit_bias_match_mlx_lm(ref, checkpoint, session):
    path = checkpoint("qwen3_moe")
    options = dict(presence_penalty=1.5, frequency_penalty=0.8, logit_bias={7: 4.0})
    processors = make_logits_processors(options["logit_bias"], None, 20, 1.5, 20, 0.8, 20)
    want = ref.tokens(path, MESSAGES, 12, logits_processors=processors)
    assert ref.run(session, MESSAGES, 12, **options) == want
    assert want != ref.tokens(path, MESSAGES, 12)  # the options changed something


def test_extra_logits_processor_sees_the_whole_context(session):
    prompt = session.encode_prompt(MESSAGES)
    seen = []

    def only(token):
        def processor(tokens, logits):
            seen.append(tokens.tolist())
            return mx.where(mx.arange(logits.shape[-1]) == token, logits, -mx.inf)

        return processor

    responses = list(session.stream(MESSAGES, max_tokens=3, logits_processors=[only(9)]))
    assert [r.token for r in responses] == [9, 9, 9]
    # The first call sees the prompt (also what a prefix cache skipped), then each new token.
    assert seen[0] == prompt and seen[1] == [*prompt, 9]


def test_chat_template_kwargs_reach_the_template(session):
    seen = {}
    template = session.tokenizer.apply_chat_template

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return template(*args, **kwargs)

    session.tokenizer.apply_chat_template = spy
    try:
        session.encode_prompt(MESSAGES, chat_template_kwargs={"enable_thinking": False})
    finally:
        del session.tokenizer.apply_chat_template
    assert seen["enable_thinking"] is False
