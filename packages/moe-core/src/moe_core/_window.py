"""The live hit rate next to Belady's, on a sliding window of one layer's recent steps.

The cache records each step's experts (already on the host: the step needed them to plan its
loads) and how many it served without a read; nothing is added to the forward pass but an
append. When asked, Belady's optimum is replayed over the window: its older half fills the
optimum's slots as the live cache was filled by what came before, its newer half is compared.
A read ahead (the lookahead's, a warm start's) counts as a read, so the live figure is bounded
by Belady's. A layer's comparison is cached until half a window of new steps has come in, and
one call refreshes at most `REFRESH_LAYERS` layers (those waiting longest; the others give their
last figures), so asking often costs nothing more and one call costs the same in a deep model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ._belady import optimal_hits

WINDOW = 512  # steps kept per layer
REFRESH_LAYERS = 8  # layers whose comparison one call may replay


@dataclass(frozen=True, slots=True)
class WindowStats:
    steps: int  # steps compared (the newer half of the window)
    lookups: int
    hits: int  # served from memory at the step (a read ahead counts as served)
    reads: int  # reads on demand and ahead
    belady_hits: int

    @property
    def read_hits(self) -> int:
        return max(0, self.lookups - self.reads)


class RecentSteps:
    """The last `size` steps of one layer's cache and the comparison over them."""

    __slots__ = ("_at", "_cached", "hits", "reads", "size", "steps", "total")

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.steps: deque[np.ndarray] = deque(maxlen=size)
        self.hits: deque[int] = deque(maxlen=size)
        self.reads: deque[int] = deque(maxlen=size)
        self.total = 0  # steps ever added
        self._cached: tuple[int, WindowStats] | None = None  # (capacity, stats)
        self._at = 0  # `total` when cached

    def add(self, needed: np.ndarray, hits: int, reads: int) -> None:
        self.steps.append(needed)
        self.hits.append(hits)
        self.reads.append(reads)
        self.total += 1

    def clear(self) -> None:
        self.steps.clear()
        self.hits.clear()
        self.reads.clear()
        self._cached = None

    @property
    def waiting(self) -> int:
        """Steps added since the comparison was last replayed (all of them if never)."""
        return self.total - self._at if self._cached else self.total + self.size

    def compare(self, capacity: int, *, refresh: bool = True) -> WindowStats | None:
        """Live and optimal hits over the newer half of the window; None before two steps.
        Without `refresh`, the last figures (None if there are none)."""
        if len(self.steps) < 2:
            return None
        cached = self._cached
        fresh = self.total - self._at < self.size // 2
        if cached and cached[0] == capacity and (fresh or not refresh):
            return cached[1]
        if not refresh:
            return None
        steps = list(self.steps)
        half = len(steps) // 2
        belady_hits, _ = optimal_hits(steps, capacity, count_from=half)
        newer = range(half, len(steps))
        stats = WindowStats(
            steps=len(newer),
            lookups=sum(steps[i].size for i in newer),
            hits=sum(self.hits[i] for i in newer),
            reads=sum(self.reads[i] for i in newer),
            belady_hits=belady_hits,
        )
        self._cached, self._at = (capacity, stats), self.total
        return stats


def compare_layers(recent: list[RecentSteps], capacity: list[int]) -> list[WindowStats | None]:
    """Each layer's comparison, replaying at most `REFRESH_LAYERS` of them (the ones that have
    waited longest)."""
    order = sorted(range(len(recent)), key=lambda i: -recent[i].waiting)
    due = set(order[:REFRESH_LAYERS])
    pairs = enumerate(zip(recent, capacity, strict=True))
    return [r.compare(c, refresh=i in due) for i, (r, c) in pairs]


def summarize(layers: list[WindowStats | None]) -> dict | None:
    """The window over all layers: live hit rate (served), read hit rate (no read on demand or
    ahead), Belady's hit rate on the same steps and the ratio of the read hit rate to it."""
    seen = [w for w in layers if w is not None]
    lookups = sum(w.lookups for w in seen)
    if not lookups:
        return None
    read_hits = sum(w.read_hits for w in seen)
    belady_hits = sum(w.belady_hits for w in seen)
    return {
        "steps": max(w.steps for w in seen),
        "lookups": lookups,
        "hit_rate": sum(w.hits for w in seen) / lookups,
        "read_hit_rate": read_hits / lookups,
        "belady_hit_rate": belady_hits / lookups,
        "ratio": read_hits / belady_hits if belady_hits else 1.0,
    }
