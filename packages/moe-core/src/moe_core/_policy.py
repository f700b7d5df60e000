"""Cache replacement policies for the experts of one MoE layer.

A policy keeps one priority per expert; the resident expert with the lowest priority is evicted
first. Priorities live in a numpy array so choosing victims among up to hundreds of experts is one
vectorised call, not a Python loop per token and layer.
"""

from __future__ import annotations

import numpy as np

POLICIES = ("lru", "lfu", "lfuda", "fifo")


class Policy:
    """Least-recently-used. The base class; subclasses change how priorities move."""

    name = "lru"

    def __init__(self, num_experts: int) -> None:
        self.num_experts = num_experts
        self.priority = np.zeros(num_experts, dtype=np.float64)
        self.clock = 0.0

    def tick(self) -> None:
        """One routing step has passed (a token batch through this layer)."""
        self.clock += 1.0

    def on_access(self, ids: np.ndarray) -> None:
        """`ids` were used this step (hits and freshly loaded misses alike)."""
        self.priority[ids] = self.clock

    def on_insert(self, ids: np.ndarray) -> None:
        """`ids` were just loaded into slots."""

    def on_evict(self, ids: np.ndarray) -> None:
        """`ids` just left their slots."""

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        """The `count` lowest-priority experts among `candidates` (expert ids)."""
        if count <= 0:
            return candidates[:0]
        if count >= candidates.size:
            return candidates
        order = np.argpartition(self.priority[candidates], count - 1)[:count]
        return candidates[order]


class LFU(Policy):
    """Least-frequently-used, counting every use since the start (ties go to the older)."""

    name = "lfu"

    def __init__(self, num_experts: int) -> None:
        super().__init__(num_experts)
        self.count = np.zeros(num_experts, dtype=np.float64)
        self.last = np.zeros(num_experts, dtype=np.float64)

    def on_access(self, ids: np.ndarray) -> None:
        self.count[ids] += 1.0
        self.last[ids] = self.clock
        # Recency only breaks ties between equal counts.
        self.priority[ids] = self.count[ids] + self.last[ids] / (self.clock + 1.0) * 0.5


class LFUDA(Policy):
    """LFU with dynamic aging: a loaded expert starts at the priority of the last one evicted, so
    experts that were hot long ago cannot squat on slots forever."""

    name = "lfuda"

    def __init__(self, num_experts: int) -> None:
        super().__init__(num_experts)
        self.count = np.zeros(num_experts, dtype=np.float64)
        self.age = 0.0

    def on_access(self, ids: np.ndarray) -> None:
        self.count[ids] += 1.0
        self.priority[ids] = self.count[ids] + self.age

    def on_evict(self, ids: np.ndarray) -> None:
        if ids.size:
            self.age = max(self.age, float(self.priority[ids].max()))
        self.count[ids] = 0.0


class FIFO(Policy):
    """First in, first out: the expert loaded longest ago leaves first."""

    name = "fifo"

    def on_access(self, ids: np.ndarray) -> None:
        pass

    def on_insert(self, ids: np.ndarray) -> None:
        self.priority[ids] = self.clock


_BY_NAME: dict[str, type[Policy]] = {"lru": Policy, "lfu": LFU, "lfuda": LFUDA, "fifo": FIFO}


def make_policy(name: str, num_experts: int) -> Policy:
    """A fresh policy by name: one of `POLICIES`."""
    try:
        return _BY_NAME[name](num_experts)
    except KeyError:
        raise ValueError(
            f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
