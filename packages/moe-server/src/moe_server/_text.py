"""Tool calls in the model's text pieces.

The scanner holds back the tail of the text that could still become a `<tool_call>` tag, so a tag
split across tokens is never half-sent to the client (stop strings: `moe_runtime.StopText`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moe_runtime import StopText


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict | str  # parsed JSON object, or the model's raw text when it is not JSON

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


def _tool_calls_from(parsed: Any) -> list[ToolCall]:
    """mlx-lm tool parsers return {"name", "arguments"} or a list of them."""
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"tool call without a name: {item!r}")
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        calls.append(
            ToolCall(id=item.get("id") or _call_id(), name=item["name"], arguments=arguments)
        )
    return calls


def _call_id() -> str:
    return uuid.uuid4().hex[:24]


@dataclass(slots=True)
class ToolScanner:
    """Splits text into plain text and tool calls found between the template's markers.

    With no parser (the request has no tools) every piece passes through as text.
    """

    start: str | None = None
    end: str | None = None
    parser: Callable[[str, Any], Any] | None = None
    tools: list[dict] | None = None
    calls: list[ToolCall] = field(default_factory=list)
    _buffer: str = ""
    _inside: bool = False

    @property
    def active(self) -> bool:
        return self.parser is not None and bool(self.start) and bool(self.end)

    def feed(self, piece: str) -> list[str | ToolCall]:
        if not self.active:
            return [piece] if piece else []
        start, end = self.start or "", self.end or ""  # both set where active
        self._buffer += piece
        out: list[str | ToolCall] = []
        while True:
            if self._inside:
                index = self._buffer.find(end)
                if index < 0:
                    return out
                body, self._buffer = self._buffer[:index], self._buffer[index + len(end) :]
                self._inside = False
                out.extend(self._parse(body))
            else:
                index = self._buffer.find(start)
                if index >= 0:
                    text, self._buffer = (
                        self._buffer[:index],
                        self._buffer[index + len(start) :],
                    )
                    self._inside = True
                    out.extend(self._text(text.rstrip()))  # whitespace before a call is layout
                    continue
                # Whitespace waits for what follows so none dangles around tool calls.
                keep = max(StopText.held_back(self._buffer, [start]), self._trailing_space())
                cut = len(self._buffer) - keep
                text, self._buffer = self._buffer[:cut], self._buffer[cut:]
                out.extend(self._text(text))
                return out

    def finish(self, finish_reason: str) -> list[str | ToolCall]:
        """What is left when generation ends. A tool call cut off by max_tokens is dropped."""
        if not self.active:
            return []
        rest, self._buffer = self._buffer, ""
        if self._inside:
            self._inside = False
            if finish_reason == "length":
                return []
            return self._parse(rest)
        return [] if (self.calls and not rest.strip()) else self._text(rest)

    def _trailing_space(self) -> int:
        return len(self._buffer) - len(self._buffer.rstrip())

    def _text(self, text: str) -> list[str | ToolCall]:
        if not text or (self.calls and not text.strip()):
            return []
        return [text]

    def _parse(self, body: str) -> list[str | ToolCall]:
        assert self.parser is not None  # only an active scanner finds a call's body
        try:
            calls = _tool_calls_from(self.parser(body, self.tools))
        except (ValueError, json.JSONDecodeError, KeyError, TypeError):
            # Not a tool call after all: the client sees what the model wrote.
            return self._text(f"{self.start}{body}{self.end}")
        self.calls.extend(calls)
        return list(calls)
