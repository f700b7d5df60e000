"""Reads of one MoE layer's experts into its slot memory: those a step waits for, those started
ahead of need (the previous layer's prediction, the background completion of a layer whose slots
can hold every expert), and which are still in flight.

Which expert goes into which slot is the cache's decision; the bytes come from an
`ExpertSource` (the checkpoint or its pack). A read that fails frees the slots it was filling,
so nothing stays marked resident without its bytes; it fails the step that needed it, while a
speculative one (a prediction, the background completion) is only undone, so a read started
while a file was bad cannot fail a later step once the file is good again.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._cache import ExpertCache
from ._checkpoint import BankMap
from ._observers import Observers
from ._slots import SlotMemory
from ._store import ExpertSource


class Reader:
    """Owns one layer's reads in flight and its prediction of the next layer's experts."""

    __slots__ = (
        "ahead",
        "cache",
        "expected",
        "map",
        "needed",
        "observers",
        "pending",
        "pending_loads",
        "scored",
        "slots",
        "source",
        "waited",
    )

    def __init__(
        self,
        bank_map: BankMap,
        cache: ExpertCache,
        slots: SlotMemory,
        source: ExpertSource,
        observers: Observers,
    ) -> None:
        self.map = bank_map
        self.cache = cache
        self.slots = slots
        self.source = source
        self.observers = observers
        self.pending: Future[None] | None = None  # reads started ahead of this layer's step
        self.pending_loads: list[tuple[int, int]] = []  # what `pending` reads
        self.needed = False  # whether a step relies on `pending` (else it is speculative)
        self.ahead: Lookahead | None = None  # predicts the next MoE layer's experts
        self.waited = 0.0  # seconds this layer's steps waited for reads
        self.expected: np.ndarray | None = None  # experts the previous layer predicted
        self.scored = PredictionScore()

    def wait(self) -> None:
        """Let reads started ahead land (and, staged, upload them) before computing."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            loads, self.pending_loads = self.pending_loads, []
            start = time.perf_counter()
            try:
                pending.result()
            except BaseException as e:
                self._failed(loads)
                if self.needed or not isinstance(e, Exception):
                    raise
            finally:
                self.waited += time.perf_counter() - start
        self.slots.upload()

    def load(self, loads: list[tuple[int, int]]) -> None:
        """Read planned `(expert, slot)` loads now; the step needs them."""
        if not loads:
            return
        self.observers.read(self.map.index, loads)
        reads = self.slots.stage(loads)
        start = time.perf_counter()
        try:
            self._submit(reads, ahead=False).result()
        except BaseException:
            self._failed(loads)
            raise
        finally:
            self.waited += time.perf_counter() - start
        self.slots.upload()

    def read_ahead(self, loads: list[tuple[int, int]], *, needed: bool = False) -> None:
        """Start reading planned loads in the background; `wait` joins them (and uploads).
        `needed`: a step relies on them, so a failure is its error (else only undone)."""
        if loads:
            self.observers.read(self.map.index, loads)
            reads = self.slots.stage(loads)
            self.pending = self._submit(reads, ahead=True)
            self.pending_loads, self.needed = loads, needed

    def _submit(self, reads: list[tuple[int, int]], *, ahead: bool) -> Future[None]:
        return self.source.submit(
            self.map, reads, self.slots.rows, ahead=ahead, direct=self.slots.direct_io
        )

    def prefetch(self, experts: np.ndarray) -> None:
        """Start reading `experts` in the background, admitted by the cache's policy."""
        self.wait()
        self.read_ahead(self.cache.prefetch(experts))

    def predict(self, experts: np.ndarray) -> None:
        """The lookahead expects `experts` at this layer's next step: tell the cache (its policy
        may protect them) and start reading the absent ones."""
        self.wait()
        self.expected = experts
        self.read_ahead(self.cache.predict(experts))

    def score(self, needed: np.ndarray) -> None:
        """This step needs `needed`: how well the previous layer's prediction named them."""
        expected, self.expected = self.expected, None
        if expected is not None:
            self.scored.add(expected, needed)

    def after_step(self, predicted: np.ndarray | None) -> None:
        """A step has been planned: start reading the next layer's `predicted` experts (from
        this step's host sync, see `Lookahead`), and fill a layer whose slots can hold all of
        its experts."""
        if predicted is not None and self.ahead is not None:
            self.ahead.predicted += int(predicted.size)
            self.ahead.next.predict(predicted)
        self.complete()

    def complete(self) -> None:
        """Once the cache can hold every expert, read the ones not seen yet (in the background)
        and, when all are in, switch to the device-side slot table."""
        cache = self.cache
        if self.slots.table is not None or cache.capacity < cache.num_experts:
            return
        absent = np.flatnonzero(cache.slot_of < 0)
        if absent.size == 0:
            self.wait()
            self.slots.resolve_on_device(cache.slot_of)
        elif self.pending is None:
            self.prefetch(absent)

    def _failed(self, loads: list[tuple[int, int]]) -> None:
        """A read failed: free every slot the batch was filling (which of its reads failed is
        not known), so the next step reads them again."""
        self.cache.forget(np.array([expert for expert, _ in loads], dtype=np.int64))
        self.slots.discard(loads)


@dataclass(slots=True)
class PredictionScore:
    """How the experts predicted for a layer compare with those its next step needed."""

    predicted: int = 0  # experts predicted
    used: int = 0  # of which the step needed
    needed: int = 0  # experts needed by steps that had a prediction

    def add(self, predicted: np.ndarray, needed: np.ndarray) -> None:
        self.predicted += int(predicted.size)
        self.needed += int(needed.size)
        self.used += int(np.intersect1d(predicted, needed, assume_unique=True).size)

    def as_dict(self) -> dict[str, float]:
        return {
            "prediction_scored": self.predicted,
            "prediction_needed": self.needed,
            "prediction_used": self.used,
            "prediction_precision": self.used / self.predicted if self.predicted else 0.0,
            "prediction_recall": self.used / self.needed if self.needed else 0.0,
        }


class Lookahead:
    """The next MoE layer's router, applied to this layer's input, names most of the experts the
    next layer will pick, so their reads overlap this layer's compute. Its picks are computed
    with this layer's routing and brought to the host in the same sync (`picks`)."""

    __slots__ = ("next", "predicted", "router", "seen_misses", "skipped", "top_k")

    def __init__(self, next_layer: Reader, router: nn.Module, top_k: int) -> None:
        self.next = next_layer
        self.router = router
        self.top_k = top_k
        self.predicted = 0  # experts predicted
        self.skipped = 0  # steps not predicted
        self.seen_misses = 0  # the next layer's misses when it was last predicted

    def picks(self, x: mx.array, choices: int) -> mx.array | None:
        """The next layer's likely choices for `x` (lazy), or None where predicting does not
        pay: a step of `choices` (token, expert) pairs too large for decode, a next layer
        holding every expert, or one that has been hitting."""
        nxt = self.next
        if nxt.slots.table is not None or choices * 2 > nxt.cache.capacity:
            return None
        misses = nxt.cache.stats.misses
        if misses == self.seen_misses:
            self.skipped += 1
            if self.skipped % 8:
                return None
        self.seen_misses = misses
        scores = self.router(x)
        if isinstance(scores, tuple):  # MoEGate-style routers return (indices, scores)
            return scores[0]
        return mx.argpartition(scores, kth=-self.top_k, axis=-1)[..., -self.top_k :]
