"""`offload(model, path_or_geometry, plan)`: swap every expert bank of an mlx-lm model for an
offloaded one, as a plan says.

The model must be loaded lazily (`mlx_lm.load(path, lazy=True)`), so no expert weight has been read
yet: the banks' lazy expert arrays are replaced by slot tensors before anything is evaluated.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import _warmup
from ._backend import Backend, detect_backend
from ._bank import Layer, OffloadedBank
from ._cache import ExpertCache
from ._checkpoint import BankMap, find_banks
from ._errors import CheckpointError, MoEError
from ._geometry import Geometry, block_of, describe
from ._handle import OffloadHandle
from ._host import HostRows, HostTier, Staging, aligned_empty
from ._lowbit import LOWBIT_BITS, make_copies
from ._miss import MISS_MODES, make_miss
from ._observers import DeviceCounts, Observers
from ._pack import PACK_NAME, open_pack
from ._plan import Plan, plan_budget
from ._policy import DEFAULT_POLICY, POLICIES
from ._reads import Lookahead, Reader
from ._slots import MLXUploader, SlotMemory
from ._store import ExpertStore


def offload(
    model: nn.Module,
    source: str | Path | Geometry,
    plan: Plan | None = None,
    *,
    capacity: int | list[int] | None = None,
    memory: int | str | None = None,
    reserve: int | str = 0,
    policy: str = DEFAULT_POLICY,
    miss: str = "exact",
    threads: int = 4,
    packed: str | Path | None = "auto",
    lookahead: bool = True,
    backend: Backend | None = None,
    lowbit_bits: int = LOWBIT_BITS,
    host_memory: int | str | None = None,
) -> OffloadHandle:
    """Replace every expert bank of a lazily loaded mlx-lm `model` with an offloaded one.

    `source` is the checkpoint directory or its `describe(model, path)`. `plan` (from
    `plan_budget`, perhaps spread by a profile) says the slots per MoE layer; without one, it is
    planned here from `capacity` (slots per MoE layer, one int or one per layer) or `memory`
    (what the whole process may use: bytes, or text such as "16GB"), not both, keeping `reserve`
    free for the caller (KV cache); with neither, the budget is what the backend has available.
    MLX's memory limits are set once, from the plan.

    `miss="exact"` (the default) makes every selected expert resident before its matmul;
    `miss="skip"` is lossy: it drops experts that are not resident; `miss="lowbit"` is lossy
    too: it computes them from resident `lowbit_bits`-bit copies of every expert (made here from
    the checkpoint, and counted in the plan) while their full weights are read. `packed` names a packed
    expert file (`moe pack`); "auto" uses `experts.moepack` beside the checkpoint when there is
    one for this very checkpoint. `lookahead` lets each layer start reading the experts the
    next layer's router is likely to pick.

    On CUDA `memory` is GPU memory, and `host_memory` (bytes or text; 0 for none) sizes a
    second tier of experts in host RAM between the GPU's slots and the checkpoint; by default
    it takes half of what the host has available. Elsewhere (one memory) it is refused.
    """
    if miss not in MISS_MODES:
        raise ValueError(f"unknown miss mode {miss!r}; choose one of {', '.join(MISS_MODES)}")
    if policy not in POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if any(isinstance(m, OffloadedBank) for _, m in model.named_modules()):
        raise MoEError(
            "this model is already offloaded: load it again (lazy=True) to offload it anew"
        )
    backend = backend or detect_backend()
    geometry = source if isinstance(source, Geometry) else describe(model, source)
    if plan is None:
        plan = plan_budget(
            geometry,
            capacity=capacity,
            memory=memory,
            reserve=reserve,
            backend=backend,
            lowbit_bits=lowbit_bits if miss == "lowbit" else 0,
            host_memory=host_memory,
        )
    elif capacity is not None or memory is not None or reserve or host_memory is not None:
        raise ValueError("give a plan, or capacity or memory to plan with, not both")
    _check_plan(plan, geometry, backend)
    if (miss == "lowbit") != bool(plan.lowbit_bits):
        raise ValueError(
            "miss='lowbit' needs a plan that counts its low-bit copies "
            "(plan_budget(..., lowbit_bits=2)), and only it does"
        )
    if plan.memory is not None:
        backend.set_limits(plan.memory)

    banks = find_banks(model)
    maps = _packed_maps(geometry, packed)
    store = ExpertStore(maps, threads=threads)
    observers = Observers()
    staging = None if backend.unified_memory else Staged(backend.name == "cuda")
    tier = plan.host_capacity or (0,) * len(maps)
    layers = []
    for (path, bank), bank_map, capacity, rows in zip(
        banks, maps, plan.capacity, tier, strict=True
    ):
        index, experts = bank_map.index, bank_map.num_experts
        cache = ExpertCache(experts, capacity, policy)
        cache.on_evict = functools.partial(observers.evicted, index)
        slots = SlotMemory(bank, bank_map, capacity, direct=backend.unified_memory)
        if staging is not None:
            staging.attach(slots, bank_map, cache, rows, policy)
        reads = Reader(bank_map, cache, slots, store, observers)
        block, name = block_of(model, path)
        counts = DeviceCounts(index, experts, observers)
        copies = make_copies(bank, bank_map, store, plan.lowbit_bits) if plan.lowbit_bits else None
        mode = make_miss(miss, block, copies=copies, full_shape=backend.full_shape_waves)
        layer = Layer(bank_map, cache, slots, reads, mode, counts, observers)
        setattr(block, name, OffloadedBank(bank, layer))
        layers.append(layer)
    if lookahead and miss == "exact":
        for layer, nxt, (path, _), k in zip(
            layers[:-1], layers[1:], banks[1:], geometry.top_k[1:], strict=True
        ):
            router = _router(block_of(model, path)[0])
            if router is not None and k:
                layer.reads.ahead = Lookahead(nxt.reads, router, k)
    if plan.lowbit_bits:
        store.reset_stats()  # making the copies read every expert once: not the model's misses
    warmup: _warmup.Warmup | None = None
    if backend.name == "cuda" and not os.environ.get(_HELPER):
        warmup = _warmup.start(geometry.path)
        for layer in layers:
            layer.warmup = warmup
    mx.clear_cache()
    handle = OffloadHandle(model, geometry, plan, layers, store, backend, observers)
    handle.warmup = warmup
    return handle


class Staged:
    """Where the GPU has memory of its own: each layer's host side (staging rows, or its host
    tier) and its uploader; on CUDA pinned memory and the driver's copies, elsewhere (the CPU
    tests that force this path) plain memory and uploads through MLX."""

    def __init__(self, cuda: bool) -> None:
        self.allocate = aligned_empty
        self.uploader = None
        self.checked = False
        if cuda:
            from . import _cuda

            self.cuda = _cuda
            self.allocate = _cuda.driver().pinned
            self.uploader = _cuda.CUDAUploader

    def attach(
        self, slots: SlotMemory, bank_map: BankMap, cache: ExpertCache, rows: int, policy: str
    ) -> None:
        staged = slots.staged
        assert staged is not None  # a staged bank
        arrays = [getattr(proj, name) for proj, name in staged]
        if rows > 0:
            rows = max(rows, cache.capacity)
            host_rows = HostRows(bank_map, rows, self.allocate)
            host: HostTier | Staging = HostTier(host_rows, rows, policy, cache)
        else:
            host = Staging(HostRows(bank_map, cache.capacity, self.allocate))
        if self.uploader is None:
            slots.stage_through(host, MLXUploader(staged))
            return
        uploader = self.uploader(arrays)
        if not self.checked:  # once per process, each param: bytes arrive where MLX computes
            for param, (array, nbytes) in enumerate(zip(arrays, uploader.nbytes, strict=True)):
                row = (np.arange(nbytes, dtype=np.uint64) * 7 + param).astype(np.uint8)
                self.cuda.check_uploads(array, uploader, row, param=param)
            self.checked = True
        slots.stage_through(host, uploader)


# Set in the kernel warm-up's helper processes, which must not start helpers of their own.
_HELPER = "MOE_WARMUP_HELPER"


def _check_plan(plan: Plan, geometry: Geometry, backend: Backend) -> None:
    """A plan is for one checkpoint and one backend."""
    if plan.fingerprint and plan.fingerprint != geometry.fingerprint:
        raise ValueError(
            f"the plan is for checkpoint {plan.fingerprint}, not for {geometry.fingerprint}"
        )
    if plan.num_experts and plan.num_experts != geometry.num_experts:
        raise ValueError("the plan's experts per layer are not this model's")
    if plan.backend != backend.name:
        raise ValueError(f"the plan is for the {plan.backend} backend, not {backend.name}")


def _packed_maps(geometry: Geometry, packed: str | Path | None) -> list[BankMap]:
    maps, source = list(geometry.banks), geometry.fingerprint
    if packed is None:
        return maps
    if packed == "auto":
        path = geometry.path / PACK_NAME
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
