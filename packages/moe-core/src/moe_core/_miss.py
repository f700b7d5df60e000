"""Miss modes: what a layer does with the experts a step picked that are not resident.

`Exact` (the default) reads them before computing and calls the original bank on the slots, the
same kernel with the same arguments, so outputs are identical to the unmodified model's; when one
step needs more experts than there are slots (prefill at low capacity) it runs the bank in waves,
each touched expert read once. On GPUs a wave calls the kernel with the full step's shape (the
other waves' choices pointed at one of its own slots) and keeps its rows: a call on fewer rows
may pick another kernel whose sums differ in the last bits (measured on CUDA: 0.0156 at one
token), while a call of the same shape gives each row the same bits whatever the others hold.
`Skip` is lossy: it computes the resident experts only, renormalising as the model's own gate
would, and reads the missing ones in the background for later steps. `LowBit` (`_lowbit.py`) is
lossy too: it computes the missing experts from resident low-bit copies. A new mode is a new
class with `forward`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._lowbit import LowBit

if TYPE_CHECKING:
    from ._bank import Layer

MISS_MODES = ("exact", "skip", "lowbit")

# Families whose router normalises the chosen experts' weights without a `norm_topk_prob` flag
# (a softmax over the top-k logits).
_NORMALISED_FAMILIES = ("mixtral", "gpt_oss", "granitemoe", "phimoe", "minimax")


class MissMode(Protocol):
    name: str  # as `offload(miss=...)` takes it
    lossy: bool

    def forward(
        self,
        bank: nn.Module,
        layer: Layer,
        x: mx.array,
        indices: mx.array,
        ids: np.ndarray,
        predicted: np.ndarray | None = None,
    ) -> mx.array:
        """The bank's output for `x` on the router's `indices` (`ids`: the same, on the host);
        `predicted`: the next layer's likely experts, from the same host sync."""
        ...

    def stats(self) -> dict[str, int]: ...

    def reset_stats(self) -> None: ...


class Exact:
    """Every selected expert is resident before its matmul.

    `full_shape`: waves call the kernel with the whole step's shape (GPUs). `overlap` (staged
    uploads only): a step with hits and misses computes its hits, full shape, while its misses
    are read, then the misses, and keeps each row from its own call.
    """

    name = "exact"
    lossy = False
    __slots__ = ("full_shape", "overlap")

    def __init__(self, *, full_shape: bool = False, overlap: bool = False) -> None:
        self.full_shape = full_shape
        self.overlap = overlap

    def forward(self, bank, layer, x, indices, ids, predicted=None) -> mx.array:
        needed = np.unique(ids).astype(np.int64)
        reads, cache = layer.reads, layer.cache
        reads.wait()
        reads.score(needed)
        waves = cache.step(needed)
        wave = next(waves)
        if wave.experts.size == needed.size:
            hits = wave.experts.size - len(wave.loads)
            if self.overlap and wave.loads and hits and layer.slots.host is not None:
                out = self._hits_first(bank, layer, x, ids, wave)
            else:
                reads.load(wave.loads)
                out = bank(x, mx.array(cache.slot_of[ids].astype(np.uint32)))
            reads.after_step(predicted)
            return out
        reads.load(wave.loads)
        if self.full_shape:
            return self._full_waves(bank, layer, x, ids, wave, waves)
        return self._in_waves(bank, layer, x, ids, wave, waves)

    def _hits_first(self, bank, layer, x, ids, wave) -> mx.array:
        """Compute the resident experts' rows while the misses are read, then the misses'."""
        reads, slot_of = layer.reads, layer.cache.slot_of
        missing = np.array([expert for expert, _ in wave.loads], dtype=np.int64)
        reads.read_ahead(wave.loads, needed=True)  # into host rows; uploaded by `wait`
        is_miss = np.isin(ids, missing)
        slots = slot_of[ids]
        hits = np.where(is_miss, slots[~is_miss].flat[0], slots).astype(np.uint32)
        hit_rows = bank(x, mx.array(hits))
        mx.async_eval(hit_rows)  # the uploads below touch only the misses' slots
        reads.wait()
        rest = np.where(is_miss, slots, slot_of[missing[0]]).astype(np.uint32)
        miss_rows = bank(x, mx.array(rest))
        return mx.where(mx.array(is_miss)[..., None], miss_rows, hit_rows)

    def _full_waves(self, bank, layer, x, ids, wave, waves) -> mx.array:
        """Waves, each a call of the full step's shape whose rows of other waves point at one
        of its own slots; each row is kept from its own wave's call."""
        reads, staged = layer.reads, layer.slots.host is not None
        out = None
        while True:
            in_wave = np.isin(ids, wave.experts)  # [..., k]
            filler = layer.cache.slot_of[wave.experts[0]]
            slots = np.where(in_wave, layer.cache.slot_of[ids], filler).astype(np.uint32)
            rows = bank(x, mx.array(slots))  # [..., k, D]
            out = rows if out is None else mx.where(mx.array(in_wave)[..., None], rows, out)
            wave = next(waves, None)
            if wave is not None and staged:
                # Staged (CUDA): this wave's experts are on the device already, so the next
                # wave's reads into host rows overlap its compute.
                reads.read_ahead(wave.loads, needed=True)
            # The next wave overwrites these slots: finish this one first.
            mx.eval(out)
            if wave is None:
                return out
            if staged:
                reads.wait()
            else:
                reads.load(wave.loads)

    def _in_waves(self, bank, layer, x, ids, wave, waves) -> mx.array:
        """Run the bank over (token, choice) pairs wave by wave, then put rows back in order
        (the CPU backend, whose kernel gives a row the same bits in a call of any size)."""
        reads, staged = layer.reads, layer.slots.host is not None
        *lead, k = ids.shape
        flat_x = x.reshape(-1, x.shape[-1])  # [N, D]
        flat_ids = ids.reshape(-1, k)  # [N, k]
        outputs, order = [], []
        while True:
            token, choice = np.nonzero(np.isin(flat_ids, wave.experts))
            slots = layer.cache.slot_of[flat_ids[token, choice]].astype(np.uint32)
            out = bank(flat_x[mx.array(token)], mx.array(slots[:, None]))  # [n, 1, D]
            wave = next(waves, None)
            if wave is not None and staged:
                # Staged (CUDA): this wave's experts are on the device already, so the next
                # wave's reads into host rows overlap its compute.
                reads.read_ahead(wave.loads, needed=True)
            # The next wave overwrites these slots: finish this one first.
            mx.eval(out)
            outputs.append(out[:, 0])
            order.append(token * k + choice)
            if wave is None:
                break
            if staged:
                reads.wait()
            else:
                reads.load(wave.loads)
        rows = mx.concatenate(outputs)[mx.array(np.argsort(np.concatenate(order)))]
        return rows.reshape(*lead, k, rows.shape[-1])

    def stats(self) -> dict[str, int]:
        return {"skipped": 0}

    def reset_stats(self) -> None:
        pass


class Skip:
    """Lossy: drop the experts that are not resident, renormalising as the router would, and
    read them in the background so later steps have them."""

    name = "skip"
    lossy = True
    __slots__ = ("router", "skipped")

    def __init__(self, router: RouterTap) -> None:
        self.router = router
        self.skipped = 0  # expert choices left out

    def forward(self, bank, layer, x, indices, ids, predicted=None) -> mx.array:
        reads, cache = layer.reads, layer.cache
        reads.wait()  # the experts this layer's previous step started reading
        slot = cache.lookup(ids)
        resident = slot >= 0
        missing = np.unique(ids[~resident])
        self.skipped += int((~resident).sum())
        if missing.size:
            # Fill the cache for later steps, never into a slot this step computes with.
            # A failed fill is this mode's error (it has no other reads to report it).
            reads.read_ahead(cache.prefetch(missing, keep=np.unique(ids[resident])), needed=True)
        if not resident.any():
            return mx.zeros((*ids.shape, x.shape[-1]), dtype=x.dtype)
        slot = np.where(resident, slot, slot[resident].flat[0]).astype(np.uint32)
        out = bank(x, mx.array(slot))
        keep = mx.array(resident)
        if self.router.normalised:
            w = self.router.weights(indices)
            kept = mx.where(keep, w, 0.0)
            scale = w.sum(axis=-1, keepdims=True) / mx.maximum(
                kept.sum(axis=-1, keepdims=True), 1e-20
            )
            factor = mx.where(keep, scale, 0.0)
        else:
            factor = keep.astype(mx.float32)
        return out * factor[..., None].astype(out.dtype)

    def stats(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def reset_stats(self) -> None:
        self.skipped = 0


def make_miss(
    name: str, block: nn.Module, *, copies: nn.Module | None = None, full_shape: bool = False
) -> MissMode:
    """The miss mode `name` for the MoE block `block` (whose bank it serves); `copies`: the
    bank's low-bit twin, for `lowbit`; `full_shape`: exact waves keep the step's kernel shape
    (GPU backends)."""
    if name == "exact":
        return Exact(full_shape=full_shape)
    if name == "skip":
        return Skip(tap_router(block))
    if name == "lowbit":
        if copies is None:
            raise ValueError("miss mode 'lowbit' needs the bank's low-bit copies")
        return LowBit(copies)
    raise ValueError(f"unknown miss mode {name!r}; choose one of {', '.join(MISS_MODES)}")


class RouterTap(nn.Module):
    """Wraps a MoE block's router to keep its last output, for the lossy `skip` mode's weights."""

    def __init__(self, router: nn.Module, *, normalised: bool) -> None:
        super().__init__()
        self.router = router
        self.normalised = normalised
        self.last: Any = None  # the router's output: logits, or (indices, scores)

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
