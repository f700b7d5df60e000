"""`OffloadHandle`: what `offload` returns. Statistics, resident sets, pinning, prefetch and the
observers of one model's offloaded banks. Statistics are kept by whoever does the work (the cache,
the store, the miss mode) and only read here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any, TypeVar, cast

import mlx.nn as nn
import numpy as np

from ._backend import Backend
from ._bank import Layer
from ._geometry import Geometry
from ._observers import Observers
from ._plan import Plan
from ._policy import Policy
from ._reads import PredictionScore
from ._store import ExpertStore
from ._window import compare_layers, summarize

T = TypeVar("T")


class OffloadHandle:
    """The offloaded banks of one model: see `offload`."""

    def __init__(
        self,
        model: nn.Module,
        geometry: Geometry,
        plan: Plan,
        layers: list[Layer],
        store: ExpertStore,
        backend: Backend,
        observers: Observers,
    ) -> None:
        self.model = model
        self.geometry = geometry
        self.plan = plan
        self.layers = layers
        self.store = store
        self.backend = backend
        self._observers = observers
        self.warmup: Any = None  # the kernel warm-up started with it (CUDA, fresh kernel cache)

    @property
    def capacity(self) -> list[int]:
        return [layer.cache.capacity for layer in self.layers]

    @property
    def num_experts(self) -> list[int]:
        return [layer.map.num_experts for layer in self.layers]

    @property
    def miss(self) -> str:
        return self.layers[0].miss.name

    # -- resident experts -----------------------------------------------------------------------
    def resident(self) -> list[set[int]]:
        """Per MoE layer, the expert ids now in memory (host-side tables: no device sync)."""
        return [set(layer.cache.resident().tolist()) for layer in self.layers]

    def recent(self) -> list[list[np.ndarray]]:
        """Per MoE layer, the experts of each of its last steps (up to 512), oldest first: the
        window `stats()["window"]` compares with Belady's optimum, a trace to choose from."""
        return [list(layer.cache.recent.steps) for layer in self.layers]

    def pinned(self) -> list[set[int]]:
        return [set(np.flatnonzero(layer.cache.pinned).tolist()) for layer in self.layers]

    def pin(self, layer_to_ids: Mapping[int, Iterable[int]]) -> None:
        """Load and pin experts per MoE layer; a pinned expert is never evicted."""
        for index, ids in layer_to_ids.items():
            layer = self.layers[index]
            layer.reads.wait()
            layer.reads.load(layer.cache.pin(np.fromiter(ids, dtype=np.int64)))

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
            layer.reads.wait()
            loads = layer.cache.prefetch(np.fromiter(ids, dtype=np.int64))
            layer.reads.load(loads)
            count += len(loads)
        return count

    # -- observers ------------------------------------------------------------------------------
    def observe(self, observer: T) -> T:
        """Tell `observer` what the banks do, beside any others; returns it.

        It may have any of `on_step(layer, ids)` (each step's chosen experts, [tokens, k]: this
        keeps every layer on the host-synced path), `on_counts(layer, counts)` (how often each
        expert was chosen, in batches; layers holding all their experts count on the device and
        hand counts over every 64 steps and at `flush_counts`), `on_reads(layer, experts)` and
        `on_evictions(layer, experts)`. They are called on the thread running the model (or
        calling `pin`/`prefetch`) and should only add to counters."""
        self.flush_counts()
        self._observers.add(observer)
        return observer

    def unobserve(self, observer: object) -> None:
        """Stop telling `observer` (after handing it the counts held on the device)."""
        self.flush_counts()
        self._observers.remove(observer)

    def flush_counts(self) -> None:
        """Hand counts still held on the device to the counting observers."""
        for layer in self.layers:
            layer.counts.flush()

    # -- statistics -----------------------------------------------------------------------------
    def stats(self, *, window: bool = True) -> dict:
        """Hits, misses, bytes and seconds read, in all and per MoE layer, and the plan.

        Per layer, `read_seconds` is what its steps waited for reads (reads it needed, and
        reads started ahead that had not landed yet); the reads started ahead of need are also
        counted apart (`ahead_bytes`, `ahead_read_seconds`: their own spans, overlapped with
        compute). `read_mb_per_s` is the store's throughput over all its reads. Where the GPU
        has memory of its own: bytes and seconds of uploads, and the host tier's hits (GPU
        misses it served), misses (read from storage into it) and evictions.

        `window=False` leaves out the live hit rate next to Belady's (`"window": None`), whose
        replay is the one costly part (milliseconds per layer every 256 steps); a caller that
        asks often and does not show it (the live page) need not pay for it."""
        per_layer: list[dict[str, Any]] = []
        for layer in self.layers:
            layer.reads.wait()
            cache, read, ahead = (
                layer.cache,
                self.store.stats_of(layer.map.index),
                layer.reads.ahead,
            )
            slots = layer.slots
            per_layer.append(
                {
                    "layer": layer.map.index,
                    "path": layer.map.path,
                    "num_experts": layer.map.num_experts,
                    "capacity": cache.capacity,
                    "resident": int((cache.expert_in >= 0).sum()),
                    "pinned": int(cache.pinned.sum()),
                    **cache.stats.as_dict(),
                    "bytes_read": read.bytes_read,
                    "read_seconds": layer.reads.waited,
                    "ahead_bytes": read.ahead_bytes,
                    "ahead_read_seconds": read.ahead_seconds,
                    **layer.miss.stats(),
                    "lookahead_predicted": ahead.predicted if ahead else 0,
                    **layer.reads.scored.as_dict(),
                    "uploaded_bytes": slots.uploaded_bytes,
                    "upload_seconds": slots.upload_seconds,
                    **(slots.host.stats() if slots.host is not None else {}),
                }
            )
        hits = sum(p["hits"] for p in per_layer)
        misses = sum(p["misses"] for p in per_layer)
        total = self.store.stats
        tier = {
            key: sum(p.get(key, 0) for p in per_layer)
            for key in ("host_hits", "host_misses", "host_evictions", "host_demoted")
        }
        return {
            "miss": self.miss,
            "lossy": self.layers[0].miss.lossy,
            "packed": self.layers[0].map.contiguous,
            "lookahead": self.layers[0].reads.ahead is not None,
            "policy": cast(Policy, self.layers[0].cache.policy).name,  # made from its name
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "skipped": sum(p["skipped"] for p in per_layer),
            # choices computed from low-bit copies (the lossy `lowbit` mode)
            "lowbit": sum(p.get("lowbit", 0) for p in per_layer),
            "bytes_read": total.bytes_read,
            "read_seconds": sum(p["read_seconds"] for p in per_layer),
            "ahead_bytes": total.ahead_bytes,
            "read_mb_per_s": total.bytes_read / total.read_seconds / 1e6
            if total.read_seconds
            else 0.0,
            "uploaded_bytes": sum(p["uploaded_bytes"] for p in per_layer),
            "upload_seconds": sum(p["upload_seconds"] for p in per_layer),
            "host_tier": bool(self.plan.host_capacity),
            **tier,
            "evictions": sum(p["evictions"] for p in per_layer),
            # The live hit rate next to Belady's on the last steps (moe_core._window).
            "window": summarize(
                compare_layers(
                    [layer.cache.recent for layer in self.layers],
                    [layer.cache.capacity for layer in self.layers],
                )
            )
            if window
            else None,
            "kernel_warmup": None
            if self.warmup is None
            else {
                "helpers": len(self.warmup.processes),
                "waited_s": self.warmup.seconds,
                "failed": self.warmup.failed,
            },
            "peak_memory": self.backend.peak_memory(),
            "budget": asdict(self.plan),
            "layers": per_layer,
        }

    def reset_stats(self) -> None:
        for layer in self.layers:
            layer.reads.wait()
            layer.cache.reset_stats()
            layer.miss.reset_stats()
            layer.reads.waited = 0.0
            layer.reads.scored = PredictionScore()
            layer.slots.uploaded_bytes, layer.slots.upload_seconds = 0, 0.0
            if layer.slots.host is not None:
                layer.slots.host.reset_stats()
        self.store.reset_stats()

    def close(self) -> None:
        """Join reads in flight and close the checkpoint's files; the model cannot run after."""
        for layer in self.layers:
            layer.reads.wait()
            layer.closed = True
        self.store.close()

    def __enter__(self) -> OffloadHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
