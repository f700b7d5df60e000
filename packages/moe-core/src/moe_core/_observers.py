"""Observers: whoever wants to know what the offloaded banks do, several at once (warm start's
counter, the profiler's recorder, a live page), each told only what it listens for.

An observer is any object with one or more of these methods; the others are never called:

- `on_step(layer, ids)`: each step's chosen experts, `[tokens, k]` ids on the host. Listening
  to steps keeps every layer on the host-synced path.
- `on_counts(layer, counts)`: how often each expert was chosen, `[E]` int64, in batches: after
  every synced step, and from layers that resolve slots on the device (no host sync) every
  `COUNT_EVERY` steps and at `handle.flush_counts()`.
- `on_reads(layer, experts)`: expert ids whose reads were just started.
- `on_evictions(layer, experts)`: expert ids that just left their slots.

Calls come from the thread running the model (in its forward pass) or calling the handle's
`pin`/`prefetch`, and never sync with the device: an observer should only add to counters (and
coalesce or publish elsewhere).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

# Steps a layer counts on the device before handing the counts over.
COUNT_EVERY = 64

EVENTS = ("on_step", "on_counts", "on_reads", "on_evictions")


class Observers:
    """The observers of one handle, shared by its layers and indexed by event, so a layer asks
    one tuple whether anyone listens."""

    __slots__ = ("_all", "counts", "evictions", "reads", "steps")

    def __init__(self) -> None:
        self._all: list[object] = []
        self._index()

    def add(self, observer: object) -> None:
        if not any(callable(getattr(observer, name, None)) for name in EVENTS):
            raise TypeError(
                f"{type(observer).__name__} is not an observer: it has none of {', '.join(EVENTS)}"
            )
        if not any(o is observer for o in self._all):
            self._all.append(observer)
            self._index()

    def remove(self, observer: object) -> None:
        self._all = [o for o in self._all if o is not observer]
        self._index()

    def _index(self) -> None:
        def bound(name):
            return tuple(getattr(o, name) for o in self._all if callable(getattr(o, name, None)))

        self.steps = bound("on_step")
        self.counts = bound("on_counts")
        self.reads = bound("on_reads")
        self.evictions = bound("on_evictions")

    def step(self, layer: int, ids: np.ndarray, num_experts: int) -> None:
        """One synced step chose `ids` ([..., k], on the host)."""
        flat = ids.reshape(-1, ids.shape[-1])
        for on_step in self.steps:
            on_step(layer, flat)
        if self.counts:
            counts = np.bincount(flat.ravel(), minlength=num_experts)[:num_experts]
            for on_counts in self.counts:
                on_counts(layer, counts)

    def read(self, layer: int, loads: list[tuple[int, int]]) -> None:
        if self.reads and loads:
            experts = np.fromiter((e for e, _ in loads), dtype=np.int64, count=len(loads))
            for on_reads in self.reads:
                on_reads(layer, experts)

    def evicted(self, layer: int, experts: np.ndarray) -> None:
        if self.evictions and experts.size:
            for on_evictions in self.evictions:
                on_evictions(layer, experts)


class DeviceCounts:
    """Choices counted on the device by a layer that resolves its slots there, so counting does
    not bring back the host sync that path avoids; handed to the counting observers every
    `COUNT_EVERY` steps and on `flush`."""

    __slots__ = ("counted", "counts", "layer", "num_experts", "observers")

    def __init__(self, layer: int, num_experts: int, observers: Observers) -> None:
        self.layer = layer
        self.num_experts = num_experts
        self.observers = observers
        self.counts: mx.array | None = None  # [E] int32, lazy until the layer's output is
        self.counted = 0  # steps in `counts`

    def add(self, indices: mx.array) -> mx.array:
        """Count one step's choices; returns the running counts, which the caller ties to the
        layer's output (`mx.depends`) so its own eval computes them."""
        flat = indices.reshape(-1)
        add = (
            mx.zeros((self.num_experts,), dtype=mx.int32)
            .at[flat]
            .add(mx.ones(flat.shape, dtype=mx.int32))
        )
        counts = add if self.counts is None else self.counts + add
        self.counts = counts
        self.counted += 1
        if self.counted >= COUNT_EVERY:
            self.flush()
        return counts

    def flush(self) -> None:
        """Hand the counts held on the device to the counting observers."""
        if self.counts is None:
            return
        counts, self.counts, self.counted = np.array(self.counts), None, 0
        for on_counts in self.observers.counts:
            on_counts(self.layer, counts.astype(np.int64))
