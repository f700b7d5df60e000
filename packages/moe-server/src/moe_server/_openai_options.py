"""The options of an OpenAI chat or completions request: sampling, stops, logprobs, the
response format and the thinking switch; what cannot be honoured is a 400 naming the field."""

from __future__ import annotations

from dataclasses import dataclass

from ._engine import Engine
from ._request import RequestError
from ._validate import effort_thinking, get, positive_int, sampling, string_list, template_kwargs

MAX_TOP_LOGPROBS = 20


@dataclass(slots=True, frozen=True)
class Options:
    model: str
    stream: bool
    include_usage: bool
    stops: list[str]
    sampling: dict
    template: dict
    logprobs: int | None
    output: tuple[str, dict | None] | None  # response_format as ("json", schema)


def _reject_unsupported(body: dict) -> None:
    """Options this server cannot honour get a 400, never silence."""
    n = get(body, "n", int, default=1)
    if n != 1:
        raise RequestError("only n=1 is supported", param="n")
    if get(body, "echo", bool, default=False):
        raise RequestError("'echo' is not supported by this server", param="echo")
    if get(body, "best_of", int, default=1) != 1:
        raise RequestError("only best_of=1 is supported", param="best_of")
    if get(body, "suffix", str):
        raise RequestError("'suffix' is not supported by this server", param="suffix")


def _logprobs(body: dict, *, chat: bool) -> int | None:
    """How many alternatives to report per token, or None for no logprobs. Chat has
    `logprobs: true` + `top_logprobs: n`; completions has `logprobs: n`."""
    if chat:
        if not get(body, "logprobs", bool, default=False):
            if get(body, "top_logprobs", int):
                raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
            return None
        top = get(body, "top_logprobs", int, default=0)
        name = "top_logprobs"
    else:
        top = get(body, "logprobs", int)
        name = "logprobs"
        if top is None:
            return None
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise RequestError(f"'{name}' must be between 0 and {MAX_TOP_LOGPROBS}", param=name)
    return top


def response_format(
    fmt: dict | None, where: str = "response_format"
) -> tuple[str, dict | None] | None:
    """None for free text, else ("json", schema or None for any JSON object)."""
    if fmt is None or fmt.get("type") == "text":
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return ("json", None)
    if kind == "json_schema":
        spec = get(fmt, "json_schema", dict, required=True, where=f"{where}.")
        schema = get(
            spec, "schema", dict, default={"type": "object"}, where=f"{where}.json_schema."
        )
        return ("json", schema)
    raise RequestError(
        f"'{where}.type' must be text, json_object or json_schema, got {kind!r}",
        param=f"{where}.type",
    )


def parse_options(body: dict, engine: Engine, *, chat: bool) -> Options:
    _reject_unsupported(body)
    get(body, "model", str)  # any name: the loaded model answers, under its own name
    stream = get(body, "stream", bool, default=False)
    stream_options = get(body, "stream_options", dict, default={})
    include_usage = get(
        stream_options, "include_usage", bool, default=False, where="stream_options."
    )
    max_tokens = positive_int(body, "max_completion_tokens") or positive_int(
        body, "max_tokens", default=engine.limits.max_tokens_default
    )
    thinking = get(body, "enable_thinking", bool)
    if thinking is None:
        thinking = effort_thinking(get(body, "reasoning_effort", str), "reasoning_effort")
    return Options(
        model=engine.provider.model_id,
        stream=stream,
        include_usage=include_usage,
        stops=string_list(body, "stop"),
        sampling=sampling(body, max_tokens=max_tokens, vocab=_vocab(engine)),
        template=template_kwargs(thinking=thinking, extra=body.get("chat_template_kwargs")),
        logprobs=_logprobs(body, chat=chat),
        output=response_format(get(body, "response_format", dict)),
    )


def _vocab(engine: Engine) -> int | None:
    tokenizer = engine.provider.tokenizer
    try:
        return len(tokenizer.get_vocab())
    except Exception:
        return None
