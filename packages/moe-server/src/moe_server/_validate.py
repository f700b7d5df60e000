"""Small hand-written checks for request bodies; each failure names the field."""

from __future__ import annotations

import json
from typing import Any

from ._request import RequestError

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def _json_type(value: Any) -> str:
    for kind, name in _JSON_TYPES.items():
        if type(value) is kind:
            return name
    return "null" if value is None else type(value).__name__


def get(
    data: dict,
    name: str,
    kinds: type | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
    where: str = "",
) -> Any:
    """data[name] checked against `kinds` (JSON null counts as absent); bool is never a number."""
    path = f"{where}{name}"
    if data.get(name) is None:
        if required:
            raise RequestError(f"missing required field '{path}'", param=path)
        return default
    value = data[name]
    named = kinds if isinstance(kinds, tuple) else (kinds,)
    accepted = (*named, int) if float in named else named
    if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in named):
        wanted = " or ".join(_JSON_TYPES[k] for k in named)
        raise RequestError(f"'{path}' must be {wanted}, got {_json_type(value)}", param=path)
    return value


def number(data: dict, name: str, *, low: float, high: float, default: Any = None) -> Any:
    value = get(data, name, float, default=default)
    if value is not None and not low <= value <= high:
        raise RequestError(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def positive_int(data: dict, name: str, *, default: Any = None) -> Any:
    value = get(data, name, int, default=default)
    if value is not None and value < 1:
        raise RequestError(f"'{name}' must be at least 1, got {value}", param=name)
    return value


def string_list(data: dict, name: str) -> list[str]:
    """A string or a list of strings (stop sequences)."""
    value = get(data, name, (str, list), default=[])
    values = [value] if isinstance(value, str) else value
    if not all(isinstance(v, str) for v in values):
        raise RequestError(f"'{name}' must be a string or a list of strings", param=name)
    return [v for v in values if v]


def sampling(data: dict, *, max_tokens: int, vocab: int | None = None) -> dict:
    """Sampling options the APIs share, plus mlx-lm's top_k/min_p/repetition_penalty; the
    penalties and logit_bias are mlx-lm's logits processors (penalties look at the last 20
    tokens, as in mlx-lm's own server)."""
    out: dict[str, Any] = {"max_tokens": max_tokens}
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("min_p", 0.0, 1.0),
        ("repetition_penalty", 0.0, 10.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = number(data, name, low=low, high=high)
        if value is not None:
            out[name] = float(value)
    top_k = get(data, "top_k", int)
    if top_k is not None:
        if top_k < 0:
            raise RequestError(f"'top_k' must be at least 0, got {top_k}", param="top_k")
        out["top_k"] = top_k
    seed = get(data, "seed", int)
    if seed is not None:
        if not -(2**63) <= seed < 2**64:
            raise RequestError(f"'seed' must fit in 64 bits, got {seed}", param="seed")
        out["seed"] = seed % 2**64  # MLX takes an unsigned 64-bit seed; OpenAI's are signed
    bias = get(data, "logit_bias", dict)
    if bias:
        out["logit_bias"] = _logit_bias(bias, vocab)
    return out


def _logit_bias(bias: dict, vocab: int | None) -> dict[int, float]:
    out = {}
    for key, value in bias.items():
        where = f"logit_bias.{key}"
        if not (str(key).isascii() and str(key).isdigit()) or (
            vocab is not None and int(key) >= vocab
        ):
            raise RequestError(f"'{where}': {key!r} is not a token id of this model", param=where)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -100 <= value <= 100
        ):
            raise RequestError(f"'{where}' must be a number between -100 and 100", param=where)
        out[int(key)] = float(value)
    return out


def block_type(block: Any, where: str) -> str:
    """The `type` of a content block (OpenAI content part or Anthropic block), checked."""
    if not isinstance(block, dict):
        raise RequestError(f"'{where}' must be an object, got {_json_type(block)}", param=where)
    kind = block.get("type")
    if not isinstance(kind, str):
        raise RequestError(
            f"'{where}.type' must be a string, got {_json_type(kind)}", param=f"{where}.type"
        )
    return kind


def text_of(
    value: Any,
    where: str,
    *,
    text_types: frozenset[str] = frozenset({"text"}),
    skip: frozenset[str] = frozenset(),
    allow_null: bool = False,
) -> str:
    """A string, or a list of text blocks (`{"type": "text", "text": ...}`) joined into one: how
    both APIs carry message text. Blocks of a type in `skip` are dropped; any other is refused."""
    if isinstance(value, str):
        return value
    if value is None and allow_null:
        return ""
    if not isinstance(value, list):
        raise RequestError(
            f"'{where}' must be a string or a list of text blocks, got {_json_type(value)}",
            param=where,
        )
    texts = []
    for i, block in enumerate(value):
        at = f"{where}[{i}]"
        kind = block_type(block, at)
        if kind in skip:
            continue
        if kind not in text_types:
            raise RequestError(
                f"'{at}': block type {kind!r} is not supported here; only text", param=at
            )
        texts.append(get(block, "text", str, required=True, where=f"{at}."))
    return "".join(texts)


def arguments_object(arguments: Any, where: str) -> Any:
    """Tool-call arguments as the chat templates expect them: a dict when they are JSON."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    raise RequestError(f"'{where}' must be a JSON string or an object", param=where)


# OpenAI's reasoning_effort values; "none" and "minimal" ask for no thinking.
_EFFORT = {
    "none": False,
    "minimal": False,
    "low": True,
    "medium": True,
    "high": True,
    "xhigh": True,
}


def effort_thinking(effort: Any, where: str) -> bool | None:
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _EFFORT:
        raise RequestError(
            f"'{where}' must be one of {', '.join(_EFFORT)}, got {effort!r}", param=where
        )
    return _EFFORT[effort]


def template_kwargs(
    *, thinking: bool | None, extra: Any = None, where: str = "chat_template_kwargs"
) -> dict:
    """The chat template's keyword arguments: `extra` as given (a client's
    chat_template_kwargs), with `enable_thinking` from the API's own thinking switch unless
    `extra` names it."""
    if extra is not None and not isinstance(extra, dict):
        raise RequestError(f"'{where}' must be an object", param=where)
    out = dict(extra or {})
    if thinking is not None:
        out.setdefault("enable_thinking", thinking)
    reserved = {"messages", "tools", "add_generation_prompt", "tokenize"} & out.keys()
    if reserved:
        name = sorted(reserved)[0]
        raise RequestError(f"'{where}.{name}' is set by the server", param=f"{where}.{name}")
    return out
