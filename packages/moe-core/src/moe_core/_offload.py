"""`offload(model, model_path, ...)`: swap every expert bank of an mlx-lm model for an offloaded one.

The model must be loaded lazily (`mlx_lm.load(path, lazy=True)`), so no expert weight has been read
yet: the banks' lazy expert arrays are replaced by slot tensors before anything is evaluated.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ._backend import Backend, detect_backend
from ._bank import MISS_MODES, Layer, Lookahead, OffloadedBank, TraceHook, tap_router
from ._cache import ExpertCache
from ._checkpoint import BankMap, bank_params, find_banks, fingerprint, layer_number, map_checkpoint
from ._errors import BudgetError, CheckpointError, MoEError
from ._pack import PACK_NAME, open_pack
from ._policy import POLICIES
from ._size import parse_size
from ._store import ExpertStore

# Tokens per prefill chunk the activation headroom is sized for (mlx-lm prefills in chunks).
PREFILL_TOKENS = 512
_MARGIN = 64 * 1024 * 1024
_LINEAR_STATE = ("linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim")


@dataclass(frozen=True, slots=True)
class Budget:
    """How the slots per layer were chosen, for `stats()` and the CLI to show."""

    capacity: tuple[int, ...]  # slots per MoE layer
    reason: str
    memory: int | None  # the process budget in bytes, when one was given or derived
    backend: str
    base_bytes: int  # what the process held before the model's weights
    dense_bytes: int  # non-expert weights
    expert_bytes: tuple[int, ...]  # one expert's bytes, per layer
    scratch_bytes: int  # activations and margin kept free
    reserve_bytes: int  # kept free for the caller (KV cache)


@dataclass(frozen=True, slots=True)
class Geometry:
    """What a model's experts look like, read from the model and the checkpoint headers only."""

    banks: tuple[BankMap, ...]
    top_k: tuple[int | None, ...]
    dense_bytes: int
    vocab_size: int = 0
    # Float32 recurrent state of one token in a linear-attention layer (Qwen3-Next's gated delta
    # net): mlx-lm's reference implementation keeps one per prompt token while it prefills.
    state_bytes_per_token: int = 0

    @property
    def expert_bytes(self) -> tuple[int, ...]:
        return tuple(b.expert_bytes for b in self.banks)

    @property
    def num_experts(self) -> tuple[int, ...]:
        return tuple(b.num_experts for b in self.banks)


def describe(model: nn.Module, model_path: str | Path) -> Geometry:
    """The model's expert geometry, without reading any weight."""
    banks = find_banks(model)
    maps = map_checkpoint(Path(model_path), banks)
    expert_ids = {id(a) for _, bank in banks for a in bank_params("", bank).values()}
    dense = sum(a.nbytes for _, a in tree_flatten(model.parameters()) if id(a) not in expert_ids)
    args = getattr(model, "args", None)
    vocab = getattr(args, "vocab_size", 0)
    return Geometry(
        tuple(maps),
        tuple(_top_k(model, path) for path, _ in banks),
        dense,
        vocab if isinstance(vocab, int) else 0,
        _state_bytes(args),
    )


def _state_bytes(args) -> int:
    dims = [getattr(args, n, None) for n in _LINEAR_STATE]
    if not all(isinstance(d, int) for d in dims):
        return 0
    heads, key, value = dims
    return heads * key * value * 4


class OffloadHandle:
    """What `offload` returns: statistics, resident sets, pinning, prefetch, a trace hook."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        store: ExpertStore,
        budget: Budget,
        backend: Backend,
    ) -> None:
        self.model = model
        self.layers = layers
        self.store = store
        self.budget = budget
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
            "budget": asdict(self.budget),
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


def offload(
    model: nn.Module,
    model_path: str | Path,
    *,
    capacity: int | list[int] | None = None,
    memory: int | str | None = None,
    policy: str = "lfuda",
    miss: str = "exact",
    reserve: int | str = 0,
    threads: int = 4,
    packed: str | Path | None = "auto",
    lookahead: bool = True,
    backend: Backend | None = None,
) -> OffloadHandle:
    """Replace every expert bank of a lazily loaded mlx-lm `model` with an offloaded one.

    Give `capacity` (slots per MoE layer, one int or one per layer) or `memory` (what the whole
    process may use: bytes, or text such as "16GB"), not both; with neither, the budget is what the backend has available.
    `reserve` bytes are kept free for the caller (KV cache). `miss="exact"` (the default) makes
    every selected expert resident before its matmul; `miss="skip"` is lossy: it drops experts that
    are not resident.

    `packed` names a packed expert file (`moe pack`); "auto" uses `experts.moepack` beside the
    checkpoint when there is one for this very checkpoint. `lookahead` lets each layer start
    reading the experts the next layer's router is likely to pick.
    """
    if capacity is not None and memory is not None:
        raise ValueError("give capacity or memory, not both")
    if miss not in MISS_MODES:
        raise ValueError(f"unknown miss mode {miss!r}; choose one of {', '.join(MISS_MODES)}")
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if any(isinstance(m, OffloadedBank) for _, m in model.named_modules()):
        raise MoEError(
            "this model is already offloaded: load it again (lazy=True) to offload it anew"
        )
    memory = None if memory is None else parse_size(memory)
    reserve = parse_size(reserve)
    backend = backend or detect_backend()
    banks = find_banks(model)
    geometry = describe(model, model_path)
    budget = _budget(geometry, capacity, memory, reserve, backend)
    if budget.memory is not None:
        backend.set_limits(budget.memory)

    maps = _packed_maps(Path(model_path), list(geometry.banks), packed)
    store = ExpertStore(maps, threads=threads)
    trace: list[TraceHook | None] = [None]
    layers = []
    for (path, bank), bank_map, slots in zip(banks, maps, budget.capacity, strict=True):
        cache = ExpertCache(bank_map.num_experts, slots, policy)
        layer = OffloadedBank.install(bank, bank_map, cache, store, direct=backend.unified_memory)
        layer.miss, layer.trace = miss, trace
        parent, name = _parent(model, path)
        if miss == "skip":
            layer.router = tap_router(parent)
        setattr(parent, name, OffloadedBank(bank, layer))
        layers.append(layer)
    if lookahead and miss == "exact":
        for layer, nxt, (path, _), k in zip(
            layers[:-1], layers[1:], banks[1:], geometry.top_k[1:], strict=True
        ):
            router = _router(_parent(model, path)[0])
            if router is not None and k:
                layer.lookahead = Lookahead(nxt, router, k)
    mx.clear_cache()
    return OffloadHandle(model, layers, store, budget, backend)


def _packed_maps(model_path: Path, maps: list[BankMap], packed: str | Path | None) -> list[BankMap]:
    if packed is None:
        return maps
    source = fingerprint(model_path)
    if packed == "auto":
        path = model_path / PACK_NAME
        if not path.exists():
            return maps
        try:
            return open_pack(path, maps, source)
        except CheckpointError as e:
            warnings.warn(f"ignoring packed experts: {e}", stacklevel=3)
            return maps
    return open_pack(Path(packed), maps, source)


def _router(block: nn.Module) -> nn.Module | None:
    for name in ("gate", "router"):
        router = getattr(block, name, None)
        if isinstance(router, nn.Module):
            return router
    return None


def plan_budget(
    geometry: Geometry,
    *,
    capacity: int | list[int] | None = None,
    memory: int | str | None = None,
    reserve: int | str = 0,
    backend: Backend | None = None,
) -> Budget:
    """The slots per layer `offload` would choose for this geometry, without touching the model.

    Same arguments and the same arithmetic as `offload`, so a tool can show what fits before
    loading anything; raises `BudgetError` when `memory` cannot hold the smallest working set.
    """
    if capacity is not None and memory is not None:
        raise ValueError("give capacity or memory, not both")
    memory = None if memory is None else parse_size(memory)
    return _budget(geometry, capacity, memory, parse_size(reserve), backend or detect_backend())


def _budget(
    geometry: Geometry, capacity, memory: int | None, reserve: int, backend: Backend
) -> Budget:
    num_experts = geometry.num_experts
    expert_bytes = geometry.expert_bytes
    base = backend.process_memory()
    activations = _activation_bytes(geometry)
    scratch = _MARGIN + backend.cache_reserve(activations) + activations
    common = dict(
        backend=backend.name,
        base_bytes=base,
        dense_bytes=geometry.dense_bytes,
        expert_bytes=expert_bytes,
        scratch_bytes=scratch,
        reserve_bytes=reserve,
    )
    if capacity is not None:
        caps = [capacity] * len(num_experts) if isinstance(capacity, int) else list(capacity)
        if len(caps) != len(num_experts):
            raise ValueError(
                f"capacity lists {len(caps)} layers, the model has {len(num_experts)} MoE layers"
            )
        for i, (c, e) in enumerate(zip(caps, num_experts, strict=True)):
            if c < 1:
                raise BudgetError(f"capacity of MoE layer {i} must be at least 1, got {c}")
            caps[i] = min(c, e)
        return Budget(tuple(caps), "capacity given", None, **common)

    given = memory is not None
    memory = memory if given else backend.available_memory()
    fixed = base + geometry.dense_bytes + scratch + reserve
    per_slot = sum(expert_bytes)  # one slot in every MoE layer
    slots = (memory - fixed) // per_slot
    smallest = max(k or 1 for k in geometry.top_k)
    if slots < smallest:
        need = fixed + smallest * per_slot
        raise BudgetError(
            f"memory budget {_gb(memory)} is too small: it needs at least {_gb(need)} "
            f"({_gb(base)} process, {_gb(geometry.dense_bytes)} non-expert weights, "
            f"{_gb(scratch + reserve)} scratch and reserve, {smallest} experts per layer of "
            f"{_gb(per_slot)} per slot across layers)"
        )
    caps = tuple(int(min(slots, e)) for e in num_experts)
    source = "given" if given else f"available on {backend.name}"
    reason = (
        f"{_gb(memory)} {source}: {_gb(fixed)} for the process, non-expert weights, scratch and "
        f"reserve leaves room for {int(slots)} slots per layer"
    )
    return Budget(caps, reason, memory, **common)


def _activation_bytes(geometry: Geometry) -> int:
    """Float32 activations of one prefill chunk through the widest expert bank, its logits, and
    the recurrent states a linear-attention layer keeps while it prefills."""
    widest = 0
    for bank, k in zip(geometry.banks, geometry.top_k, strict=True):
        rows = {p.name.split(".")[0]: p.shape for p in bank.params if p.name.endswith("weight")}
        hidden = sum(shape[0] for shape in rows.values())
        widest = max(widest, (k or 1) * hidden)
    per_token = (widest + geometry.vocab_size) * 4 * 2 + geometry.state_bytes_per_token
    return PREFILL_TOKENS * per_token


def _top_k(model: nn.Module, path: str) -> int | None:
    parent, _ = _parent(model, path)
    for name in ("num_experts_per_tok", "top_k", "experts_per_token"):
        value = getattr(parent, name, None)
        if isinstance(value, int):
            return value
    gate = getattr(parent, "gate", None)
    value = getattr(gate, "top_k", None)
    if isinstance(value, int):
        return value
    args = getattr(model, "args", None)
    for name in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(args, name, None)
        if isinstance(value, int):
            return value
    return None


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    *steps, name = path.split(".")
    node = model
    for step in steps:
        node = node[int(step)] if isinstance(node, list) else getattr(node, step)
    return node, name


def _gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


__all__ = [
    "Budget",
    "Geometry",
    "OffloadHandle",
    "describe",
    "fingerprint",
    "layer_number",
    "offload",
    "plan_budget",
]
