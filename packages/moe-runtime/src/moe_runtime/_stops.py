"""Stop strings over streamed text: hold back what could still become a stop string, cut at the
first one that appears, and never emit the stop string itself."""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """Used by `Session.stream` for its `stop` strings and by moe-server for each request's."""

    def __init__(self, stops: Sequence[str] | None) -> None:
        stops = list(stops or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        self.stops = stops
        self.pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> tuple[str, bool]:
        """`(text safe to emit, whether a stop string was reached)`."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            index, self.matched = min(hits)
            out, self.pending = self.pending[:index], ""
            return out, True
        cut = len(self.pending) - self.held_back(self.pending, self.stops)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    @staticmethod
    def held_back(text: str, markers: Sequence[str]) -> int:
        """Length of the longest tail of `text` that begins one of `markers` (and is shorter than
        it): what must wait for the next piece before it can be sent."""
        best = 0
        for marker in markers:
            for n in range(min(len(marker) - 1, len(text)), best, -1):
                if text.endswith(marker[:n]):
                    best = n
                    break
        return best
