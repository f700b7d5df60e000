"""Reasoning: a model's `<think>` text kept apart from its answer (each API's thinking switch
becomes the template's `enable_thinking` in `_validate.template_kwargs`).

The splitter holds back a tail that could still become a marker, like the stop and tool
scanners, so a `</think>` split across tokens is never half-sent as answer text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moe_runtime import StopText


@dataclass(slots=True)
class Reasoning:
    """A piece of the model's thinking (the text between its think markers)."""

    text: str


class ReasoningSplitter:
    """Splits generated text into answer text (str) and Reasoning pieces.

    `inside` says the prompt already opened a think block (templates that end the generation
    prompt with `<think>`). Whitespace that lays out the block (after `<think>`, before and after
    `</think>`) is dropped.
    """

    def __init__(self, start: str | None, end: str | None, *, inside: bool = False):
        self.start, self.end = start, end
        self.inside = inside
        self._buffer = ""
        self._fresh = True  # at the start of a block or of the answer after one: drop layout

    @property
    def active(self) -> bool:
        return bool(self.start) and bool(self.end)

    def feed(self, piece: str) -> list[str | Reasoning]:
        if not self.active:
            return [piece] if piece else []
        self._buffer += piece
        out: list[str | Reasoning] = []
        while True:
            marker = (self.end if self.inside else self.start) or ""  # both set where active
            index = self._buffer.find(marker)
            if index >= 0:
                self._emit(out, self._buffer[:index].rstrip())
                self._buffer = self._buffer[index + len(marker) :]
                self.inside, self._fresh = not self.inside, True
                continue
            cut = len(self._buffer) - StopText.held_back(self._buffer, [marker])
            if self.inside:  # whitespace there may be the layout before `</think>`
                cut = len(self._buffer[:cut].rstrip())
            self._emit(out, self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            return out

    def flush(self) -> list[str | Reasoning]:
        out: list[str | Reasoning] = []
        rest, self._buffer = self._buffer, ""
        self._emit(out, rest.rstrip() if self.inside else rest)
        return out

    def _emit(self, out: list, text: str) -> None:
        if self._fresh:
            text = text.lstrip()
        if not text:
            return
        self._fresh = False
        out.append(Reasoning(text) if self.inside else text)


def opens_thinking(tokenizer: Any, prompt_ids: list[int]) -> bool:
    """Whether the prompt ends inside a think block the template opened for the model."""
    if not getattr(tokenizer, "has_thinking", False) or not prompt_ids:
        return False
    try:
        start = tokenizer.rfind_think_start(prompt_ids)
        end = tokenizer.rfind_think_end(prompt_ids)
    except (AttributeError, TypeError, ValueError):
        return False
    return start > end


def splitter_for(tokenizer: Any, prompt_ids: list[int]) -> ReasoningSplitter:
    if not getattr(tokenizer, "has_thinking", False):
        return ReasoningSplitter(None, None)
    return ReasoningSplitter(
        tokenizer.think_start, tokenizer.think_end, inside=opens_thinking(tokenizer, prompt_ids)
    )
