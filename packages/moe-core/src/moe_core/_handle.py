"""`OffloadHandle`: what `offload` returns. Statistics, resident sets, pinning, prefetch and a
trace hook over the offloaded banks of one model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict

import mlx.nn as nn
import numpy as np

from ._backend import Backend
from ._bank import Layer, TraceHook
from ._geometry import Geometry
from ._plan import Plan
from ._store import ExpertStore


class OffloadHandle:
    """What `offload` returns: statistics, resident sets, pinning, prefetch, a trace hook."""

    def __init__(
        self,
        model: nn.Module,
        geometry: Geometry,
        plan: Plan,
        layers: list[Layer],
        store: ExpertStore,
        backend: Backend,
    ) -> None:
        self.model = model
        self.geometry = geometry
        self.plan = plan
        self.layers = layers
        self.store = store
        self.backend = backend
        self._trace: list[TraceHook | None] = layers[0].trace

    @property
    def capacity(self) -> list[int]:
        return [layer.cache.capacity for layer in self.layers]

    @property
    def num_experts(self) -> list[int]:
        return [layer.map.num_experts for layer in self.layers]

    @property
    def miss(self) -> str:
        return self.layers[0].miss

    def resident(self) -> list[set[int]]:
        """Per MoE layer, the expert ids now in memory."""
        return [set(layer.cache.resident().tolist()) for layer in self.layers]

    def pinned(self) -> list[set[int]]:
        return [set(np.flatnonzero(layer.cache.pinned).tolist()) for layer in self.layers]

    def pin(self, layer_to_ids: Mapping[int, Iterable[int]]) -> None:
        """Load and pin experts per MoE layer; a pinned expert is never evicted."""
        for index, ids in layer_to_ids.items():
            layer = self.layers[index]
            layer.wait()
            layer.load(layer.cache.pin(np.fromiter(ids, dtype=np.int64)))

    def unpin(self, layer_to_ids: Mapping[int, Iterable[int]] | None = None) -> None:
        for index, layer in enumerate(self.layers):
            if layer_to_ids is None:
                layer.cache.unpin()
            elif index in layer_to_ids:
                layer.cache.unpin(np.fromiter(layer_to_ids[index], dtype=np.int64))

    def prefetch(self, layer_to_ids: Mapping[int, Iterable[int]]) -> int:
        """Load experts ahead of need (warm start, profiles); returns how many were read."""
        count = 0
        for index, ids in layer_to_ids.items():
            layer = self.layers[index]
            layer.wait()
            loads = layer.cache.prefetch(np.fromiter(ids, dtype=np.int64))
            layer.load(loads)
            count += len(loads)
        return count

    def set_trace(self, hook: TraceHook | None) -> None:
        """Call `hook(layer, ids)` with each step's selected experts `ids` ([tokens, k]).

        A hook that only counts (`counts_only = True`, with `add_counts(layer, counts)`) lets
        layers holding all their experts skip the host sync: they count on the device and hand
        the counts over in batches, and at `flush_trace`."""
        self.flush_trace()
        self._trace[0] = hook

    def flush_trace(self) -> None:
        """Hand counts still held on the device to the counting hook."""
        for layer in self.layers:
            layer.flush_counts()

    def stats(self) -> dict:
        """Hits, misses, bytes and seconds read, in all and per MoE layer, and the budget."""
        per_layer = []
        for layer in self.layers:
            layer.wait()
            cache = layer.cache
            per_layer.append(
                {
                    "layer": layer.map.index,
                    "path": layer.map.path,
                    "num_experts": layer.map.num_experts,
                    "capacity": cache.capacity,
                    "resident": int((cache.expert_in >= 0).sum()),
                    "pinned": int(cache.pinned.sum()),
                    **cache.stats.as_dict(),
                    "bytes_read": layer.stats.bytes_read,
                    "read_seconds": layer.stats.read_seconds,
                    "skipped": layer.stats.skipped,
                    "lookahead_predicted": layer.lookahead.predicted if layer.lookahead else 0,
                }
            )
        hits = sum(p["hits"] for p in per_layer)
        misses = sum(p["misses"] for p in per_layer)
        seconds = self.store.stats.read_seconds
        return {
            "miss": self.miss,
            "packed": self.layers[0].map.contiguous,
            "lookahead": self.layers[0].lookahead is not None,
            "policy": self.layers[0].cache.policy.name,
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "bytes_read": self.store.stats.bytes_read,
            "read_seconds": seconds,
            "read_mb_per_s": self.store.stats.bytes_read / seconds / 1e6 if seconds else 0.0,
            "evictions": sum(p["evictions"] for p in per_layer),
            "peak_memory": self.backend.peak_memory(),
            "budget": asdict(self.plan),
            "layers": per_layer,
        }

    def reset_stats(self) -> None:
        for layer in self.layers:
            layer.cache.stats = type(layer.cache.stats)()
            layer.stats = type(layer.stats)()
        self.store.stats = type(self.store.stats)()

    def close(self) -> None:
        """Join reads in flight and close the checkpoint's files; the model cannot run after."""
        for layer in self.layers:
            layer.wait()
            layer.closed = True
        self.store.close()

    def __enter__(self) -> OffloadHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
