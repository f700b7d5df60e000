"""The offloaded expert bank: a drop-in for mlx-lm's `SwitchGLU`/`SwitchMLP` that keeps `C`
experts resident in slot tensors and reads the rest from disk when the router picks them.

Exact mode calls the original bank, with its weights swapped for `[C, ...]` slot tensors, on the
router's indices remapped to slots: the same kernel with the same arguments, so outputs are
identical to the unmodified model's. Only when one step needs more experts than there are slots
(prefill at low capacity) does it run the bank in waves of experts, each touched expert read once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._cache import ExpertCache
from ._checkpoint import BankMap
from ._errors import MoEError
from ._store import ExpertStore, slot_tensor, upload

TraceHook = Callable[[int, np.ndarray], None]
# A hook with `counts_only = True` and `add_counts(layer, counts)` needs how often each expert was
# chosen, not the order: sync-free layers count on the device and hand it over every
# `COUNT_EVERY` steps and on `OffloadHandle.flush_trace`.
COUNT_EVERY = 64

MISS_MODES = ("exact", "skip")

# Families whose router normalises the chosen experts' weights without a `norm_topk_prob` flag
# (a softmax over the top-k logits).
_NORMALISED_FAMILIES = ("mixtral", "gpt_oss", "granitemoe", "phimoe", "minimax")


@dataclass(slots=True)
class LayerStats:
    bytes_read: int = 0
    read_seconds: float = 0.0
    skipped: int = 0


@dataclass(slots=True)
class Layer:
    """Everything the offloaded bank of one MoE layer owns besides its module."""

    map: BankMap
    cache: ExpertCache
    store: ExpertStore
    dests: list[np.ndarray]  # per param: [C, nbytes] writable view of its slot tensor
    miss: str = "exact"
    trace: list[TraceHook | None] = field(default_factory=lambda: [None])  # shared, settable
    router: RouterTap | None = None
    stats: LayerStats = field(default_factory=LayerStats)
    lookahead: Lookahead | None = None  # predicts the next MoE layer's experts from this input
    pending: Future[None] | None = None  # reads started ahead of this layer's step
    pending_loads: list[tuple[int, int]] = field(default_factory=list)  # what `pending` reads
    staged: list[tuple[nn.Module, str]] | None = (
        None  # (projection, param) to upload, when not direct
    )
    unsent: list[int] = field(default_factory=list)  # staged slots read but not uploaded yet
    recent_misses: int = 0  # misses counted when the lookahead last looked at this layer
    # Every expert resident with a slot of its own (capacity covers the layer), so nothing is
    # ever evicted: the router's ids map to slots on the device, with no host sync.
    table: mx.array | None = None
    counts: mx.array | None = None  # [E] choices counted on the device for a counts-only hook
    counted: int = 0  # steps in `counts`
    closed: bool = False  # the handle was closed: its files and reader threads are gone

    def wait(self) -> None:
        """Let reads started by the previous layer's lookahead land before computing."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            loads, self.pending_loads = self.pending_loads, []
            try:
                pending.result()
            except BaseException:
                self._failed(loads)
                raise
        self._upload()

    def _failed(self, loads: list[tuple[int, int]]) -> None:
        """A read failed: free every slot the batch was filling (which of its reads failed is
        not known), so the next step reads them again."""
        self.cache.forget(np.array([expert for expert, _ in loads], dtype=np.int64))
        slots = {slot for _, slot in loads}
        self.unsent = [slot for slot in self.unsent if slot not in slots]

    def _upload(self) -> None:
        if self.staged is None or not self.unsent:
            return
        slots, self.unsent = self.unsent, []
        for (proj, name), host in zip(self.staged, self.dests, strict=True):
            upload(getattr(proj, name), host, slots)

    def prefetch(self, experts: np.ndarray) -> None:
        """Start reading `experts` in the background; `wait` joins them."""
        self.wait()
        self.read_ahead(self.cache.prefetch(experts))

    def read_ahead(self, loads: list[tuple[int, int]]) -> None:
        """Start reading planned `loads` in the background; `wait` joins them (and uploads)."""
        if loads:
            self.stats.bytes_read += self.map.expert_bytes * len(loads)
            self.pending = self.store.submit(self.map, loads, self.dests)
            self.pending_loads = loads
            if self.staged is not None:
                self.unsent.extend(slot for _, slot in loads)

    def complete(self) -> None:
        """Once the cache can hold every expert, read the ones not seen yet (in the background)
        and, when all are in, switch to the device-side slot table."""
        cache = self.cache
        if self.table is not None or cache.capacity < cache.num_experts:
            return
        absent = np.flatnonzero(cache.slot_of < 0)
        if absent.size == 0:
            self.wait()
            self.table = mx.array(cache.slot_of.astype(np.uint32))
        elif self.pending is None:
            self.prefetch(absent)

    def count(self, indices: mx.array) -> mx.array:
        """Count one step's choices on the device, handing them to the hook now and then;
        returns the running counts."""
        flat = indices.reshape(-1)
        add = (
            mx.zeros((self.map.num_experts,), dtype=mx.int32)
            .at[flat]
            .add(mx.ones(flat.shape, dtype=mx.int32))
        )
        counts = add if self.counts is None else self.counts + add
        self.counts = counts
        self.counted += 1
        if self.counted >= COUNT_EVERY:
            self.flush_counts()
        return counts

    def flush_counts(self) -> None:
        if self.counts is None:
            return
        counts, self.counts, self.counted = np.array(self.counts), None, 0
        hook = self.trace[0]
        if hook is not None and getattr(hook, "counts_only", False):
            hook.add_counts(self.map.index, counts.astype(np.int64))

    def load(self, loads: list[tuple[int, int]]) -> None:
        if not loads:
            return
        before = self.store.stats.read_seconds
        try:
            self.store.read(self.map, loads, self.dests)
        except BaseException:
            self._failed(loads)
            raise
        self.stats.bytes_read += self.map.expert_bytes * len(loads)
        self.stats.read_seconds += self.store.stats.read_seconds - before
        if self.staged is not None:
            self.unsent.extend(slot for _, slot in loads)
            self._upload()


@dataclass(slots=True)
class Lookahead:
    """The next MoE layer and its router: applied to this layer's input, the router names most of
    the experts the next layer will pick, so their reads overlap this layer's compute."""

    next: Layer
    router: nn.Module
    top_k: int
    predicted: int = 0
    skipped: int = 0

    def start(self, x: mx.array) -> None:
        if self.next.table is not None:  # every expert of the next layer is resident
            return
        # Predicting costs a host sync; when the next layer has been hitting, it only slows decode.
        if self.next.cache.stats.misses == self.next.recent_misses:
            self.skipped += 1
            if self.skipped % 8:
                return
        self.next.recent_misses = self.next.cache.stats.misses
        scores = self.router(x)
        if isinstance(scores, tuple):  # MoEGate-style routers return (indices, scores)
            picks = scores[0]
        else:
            picks = mx.argpartition(scores, kth=-self.top_k, axis=-1)[..., -self.top_k :]
        experts = np.unique(np.array(picks)).astype(np.int64)
        self.predicted += int(experts.size)
        self.next.prefetch(experts)


class RouterTap(nn.Module):
    """Wraps a MoE block's router to keep its last output, for the lossy `skip` mode's weights."""

    def __init__(self, router: nn.Module, *, normalised: bool) -> None:
        super().__init__()
        self.router = router
        self.normalised = normalised
        self.last = None

    def __call__(self, x):
        self.last = self.router(x)
        return self.last

    def weights(self, indices: mx.array) -> mx.array:
        """Unnormalised weight of each chosen expert, `[..., k]`."""
        out = self.last
        if isinstance(out, tuple):  # MoEGate-style routers return (indices, scores)
            return out[1].astype(mx.float32)
        logits = mx.take_along_axis(out.astype(mx.float32), indices.astype(mx.int32), axis=-1)
        return mx.exp(logits - logits.max(axis=-1, keepdims=True))


def tap_router(block: nn.Module) -> RouterTap:
    """Put a RouterTap on the block's router (`gate` or `router`)."""
    for name in ("gate", "router"):
        router = getattr(block, name, None)
        if isinstance(router, nn.Module):
            break
    else:
        raise ValueError(f"{type(block).__name__}: no `gate` or `router` to take weights from")
    if hasattr(block, "norm_topk_prob"):
        normalised = bool(block.norm_topk_prob)
    elif hasattr(router, "norm_topk_prob"):
        normalised = bool(router.norm_topk_prob)
    else:
        normalised = type(block).__module__.rsplit(".", 1)[-1] in _NORMALISED_FAMILIES
    tap = RouterTap(router, normalised=normalised)
    setattr(block, name, tap)
    return tap


class OffloadedBank(nn.Module):
    """Replaces one expert bank; see the module docstring."""

    def __init__(self, bank: nn.Module, layer: Layer) -> None:
        super().__init__()
        self.bank = bank
        self._layer = layer

    @staticmethod
    def install(
        bank: nn.Module, bank_map: BankMap, cache: ExpertCache, store: ExpertStore, *, direct: bool
    ) -> Layer:
        """Swap the bank's per-expert weights for slot tensors; returns the layer state."""
        dests, staged = [], []
        for param in bank_map.params:
            proj, name = param.name.split(".", 1)
            slots, host = slot_tensor(cache.capacity, param.shape, param.dtype, direct=direct)
            setattr(getattr(bank, proj), name, slots)
            dests.append(host)
            staged.append((getattr(bank, proj), name))
        return Layer(bank_map, cache, store, dests, staged=None if direct else staged)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        layer = self._layer
        if layer.closed:
            raise MoEError("this model's offload handle is closed: offload a new model to run it")
        hook = layer.trace[0]
        # One token's k experts are distinct, so its hits count as the synced path counts them.
        token = indices.size == indices.shape[-1]
        counting = hook is not None and getattr(hook, "counts_only", False)
        if layer.table is not None and token and (hook is None or counting):
            layer.cache.stats.hits += indices.size
            layer.cache.stats.steps += 1
            out = self.bank(x, layer.table[indices])
            if counting:
                # The counts are computed with this layer's output, by the caller's own eval:
                # evaluated, they can be handed over from any thread (a server closes its
                # session on another thread than the one that generates).
                out = mx.depends(out, layer.count(indices))
            return out
        ids = np.array(indices)  # [..., k]; the one host sync of this layer
        if hook is not None:
            hook(layer.map.index, ids.reshape(-1, ids.shape[-1]))
        needed = np.unique(ids).astype(np.int64)
        if layer.miss == "skip":
            return self._skip(x, indices, ids)

        layer.wait()
        waves = layer.cache.step(needed)
        wave = next(waves)
        layer.load(wave.loads)
        if wave.experts.size == needed.size:
            slots = layer.cache.slot_of[ids].astype(np.uint32)
            out = self.bank(x, mx.array(slots))
            ahead = layer.lookahead
            # Decode-sized steps only: a prefill chunk touches most experts anyway.
            if ahead is not None and needed.size * 2 <= ahead.next.cache.capacity:
                ahead.start(x)
            layer.complete()
            return out
        return self._in_waves(x, ids, wave, waves)

    def _in_waves(self, x, ids, wave, waves) -> mx.array:
        """Run the bank over (token, choice) pairs wave by wave, then put rows back in order."""
        layer = self._layer
        *lead, k = ids.shape
        flat_x = x.reshape(-1, x.shape[-1])  # [N, D]
        flat_ids = ids.reshape(-1, k)  # [N, k]
        outputs, order = [], []
        while True:
            token, choice = np.nonzero(np.isin(flat_ids, wave.experts))
            slots = layer.cache.slot_of[flat_ids[token, choice]].astype(np.uint32)
            out = self.bank(flat_x[mx.array(token)], mx.array(slots[:, None]))  # [n, 1, D]
            wave = next(waves, None)
            if wave is not None and layer.staged is not None:
                # Staged (CUDA): this wave's experts are on the device already, so the next
                # wave's reads into the host buffers overlap its compute.
                layer.read_ahead(wave.loads)
            # The next wave overwrites these slots: finish this one first.
            mx.eval(out)
            outputs.append(out[:, 0])
            order.append(token * k + choice)
            if wave is None:
                break
            if layer.staged is not None:
                layer.wait()
            else:
                layer.load(wave.loads)
        rows = mx.concatenate(outputs)[mx.array(np.argsort(np.concatenate(order)))]
        return rows.reshape(*lead, k, rows.shape[-1])

    def _skip(self, x: mx.array, indices: mx.array, ids: np.ndarray) -> mx.array:
        """Lossy: drop experts that are not resident, renormalising as the router would."""
        layer = self._layer
        cache = layer.cache
        slot = cache.slot_of[ids]
        resident = slot >= 0
        layer.stats.skipped += int((~resident).sum())
        cache.stats.hits += int(resident.sum())
        cache.stats.misses += int((~resident).sum())
        if not resident.any():
            return mx.zeros((*ids.shape, x.shape[-1]), dtype=x.dtype)
        cache.policy.on_access(np.unique(ids[resident]))
        slot = np.where(resident, slot, slot[resident].flat[0]).astype(np.uint32)
        out = self.bank(x, mx.array(slot))
        keep = mx.array(resident)
        if layer.router is not None and layer.router.normalised:
            w = layer.router.weights(indices)
            kept = mx.where(keep, w, 0.0)
            scale = w.sum(axis=-1, keepdims=True) / mx.maximum(
                kept.sum(axis=-1, keepdims=True), 1e-20
            )
            factor = mx.where(keep, scale, 0.0)
        else:
            factor = keep.astype(mx.float32)
        return out * factor[..., None].astype(out.dtype)
