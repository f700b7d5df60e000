"""Constrained decoding with llguidance: JSON output (`response_format`, Anthropic's
`output_config.format`) and forced tool calls (`tool_choice` required / any / a named tool).

llguidance computes, on the CPU, which tokens the grammar allows next; `GrammarProcessor` is an
mlx-lm logits processor that masks the rest. It was chosen over outlines-core and xgrammar by
`benchmarks/structured_output.py` (per-token cost, JSON Schema coverage, no torch dependency).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import llguidance
import mlx.core as mx
import numpy as np

from ._request import RequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# One line, Python's json.dumps separators: whitespace a model could repeat forever is not
# offered (llguidance's default allows any run of whitespace between JSON tokens).
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def ll_tokenizer(tokenizer: Any) -> llguidance.LLTokenizer:
    """llguidance's view of an mlx-lm tokenizer (about a second for a 150k vocabulary)."""
    import llguidance.hf

    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    return llguidance.hf.from_tokenizer(hf, eos_token=sorted(tokenizer.eos_token_ids))


def json_grammar(schema: dict | None) -> str:
    """A grammar for one JSON value matching `schema` (any object when None)."""
    return llguidance.LLMatcher.grammar_from_json_schema(
        schema if schema is not None else {"type": "object"}, overrides=_JSON_OPTIONS
    )


def tool_call_grammar(tokenizer: Any, tools: list[dict], name: str | None) -> str:
    """Exactly one call, in the template's own markers, of `name` or of any of `tools`, with
    arguments that match the tool's parameters. Only for templates whose calls are JSON
    `{"name", "arguments"}` between two markers (mlx-lm's json_tools format)."""
    start, end = tokenizer.tool_call_start, tokenizer.tool_call_end
    if not start or not end or _parser_name(tokenizer) != "json_tools":
        raise RequestError(
            "forcing a tool call needs a chat template whose tool calls are JSON between "
            f"markers; {_parser_name(tokenizer) or 'this model'}'s are not",
            param="tool_choice",
        )
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    if not chosen:
        raise RequestError(
            f"tool_choice names {name!r}, which is not in 'tools'", param="tool_choice"
        )
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in chosen
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {**schema, "x-guidance": _JSON_OPTIONS}
    lark = (
        f"start: {_literal(tokenizer, start)} {json.dumps(chr(10))} call "
        f"{json.dumps(chr(10))} {_literal(tokenizer, end)}\ncall: %json {json.dumps(schema)}"
    )
    return llguidance.LLMatcher.grammar_from_lark(lark)


def _parser_name(tokenizer: Any) -> str | None:
    parser = getattr(tokenizer, "tool_parser", None)
    module = getattr(parser, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] or None


def _literal(tokenizer: Any, marker: str) -> str:
    """A marker in lark: llguidance sees added tokens only as tokens (`<[id]>`), never as text."""
    ids = tokenizer.encode(marker, add_special_tokens=False)
    if len(ids) == 1:
        return f"<[{ids[0]}]>"
    return json.dumps(marker)


def check(grammar: str, lltok: llguidance.LLTokenizer, param: str) -> None:
    """A grammar llguidance refuses (an unsupported schema keyword, a bad pattern) is the
    request's fault: a 400 naming the field."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if is_error:
        raise RequestError(f"'{param}' cannot be enforced: {messages[0]}", param=param)


class GrammarProcessor:
    """An mlx-lm logits processor: masks every token the grammar does not allow next.

    mlx-lm calls it first with the prompt, then once per generated token with that token
    appended; each call after the first feeds the newest token to the matcher. While the model
    thinks (`thinking`: the prompt opened a think block, or the model opens one as its first
    token) the grammar waits for the think end token and masks nothing.
    """

    def __init__(
        self,
        lltok: llguidance.LLTokenizer,
        grammar: str,
        *,
        think_start: int | None = None,
        think_end: int | None = None,
        thinking: bool = False,
    ):
        self.matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(self.matcher.get_error())
        self.think_start, self.think_end = think_start, think_end
        self.thinking = thinking and think_end is not None
        self._calls = 0

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        self._calls += 1
        if self._calls > 1:
            self._advance(cast(int, tokens[-1].item()))  # a token id
        if self.thinking:
            return logits
        mask = self._allowed(logits.shape[-1])
        return mx.where(mask, logits, mx.array(-mx.inf, dtype=logits.dtype))

    def _advance(self, token: int) -> None:
        if self.thinking:
            self.thinking = token != self.think_end
            return
        if self._calls == 2 and token == self.think_start and self.think_end is not None:
            self.thinking = True
            return
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    def _allowed(self, vocab: int) -> mx.array:
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")
        if allowed.size < vocab:  # the model's embedding rows beyond the tokenizer's vocabulary
            allowed = np.pad(allowed, (0, vocab - allowed.size))
        if self._calls == 1 and self.think_start is not None and self.think_end is not None:
            allowed[self.think_start] = 1  # a thinking model may think before it answers
        return mx.array(allowed[:vocab].astype(np.bool_))
