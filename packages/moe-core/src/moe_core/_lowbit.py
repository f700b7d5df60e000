"""The lossy `lowbit` miss mode: every expert of a layer also has a resident low-bit copy (mlx's
own affine quantization, 2 bits by default, made at offload from the checkpoint's weights), and a
step computes the experts that are not in a slot from those copies at once, while their full
weights are read in the background for later steps. No step waits for a read.

The copies take memory from the same budget as the slots: `plan_budget(..., lowbit_bits=2)`
counts them (`Plan.lowbit_bytes`) and says how many full slots per layer they cost.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

from ._checkpoint import BankMap, ParamMap

if TYPE_CHECKING:
    from ._bank import Layer
    from ._store import ExpertSource

LOWBIT_BITS = 2
# Dequantized weights per batch while the copies are made, so a large layer is made in pieces
# and the transient memory stays within the plan's scratch.
_BATCH_BYTES = 32 * 1024 * 1024


def lowbit_group(input_dims: int) -> int:
    """The quantization group size of a low-bit copy of a projection with `input_dims` inputs."""
    for group in (64, 32):
        if input_dims % group == 0:
            return group
    raise ValueError(
        f"a projection with {input_dims} inputs cannot be quantized in groups of 64 or 32"
    )


def lowbit_expert_bytes(projections: tuple[tuple[int, int, int], ...], bits: int) -> int:
    """Bytes of one expert's low-bit copy; `projections`: (outputs, inputs, bytes of one scale)
    of each projection (`Geometry.projections`)."""
    total = 0
    for out, inputs, scale in projections:
        total += out * inputs * bits // 8 + 2 * out * (inputs // lowbit_group(inputs)) * scale
    return total


class LowBit:
    """Lossy: experts not in a slot are computed from their low-bit copies, and their full
    weights are read in the background for later steps."""

    name = "lowbit"
    lossy = True
    __slots__ = ("copies", "served")

    def __init__(self, copies: nn.Module) -> None:
        self.copies = copies  # the bank's twin over every expert's low-bit copy
        self.served = 0  # expert choices answered by a low-bit copy

    def forward(self, bank, layer: Layer, x, indices, ids, predicted=None) -> mx.array:
        reads, cache = layer.reads, layer.cache
        busy = reads.pending is not None and not reads.pending.done()
        if busy:
            # Never wait: experts still being read count as absent for this step.
            reading = np.array([expert for expert, _ in reads.pending_loads], dtype=np.int64)
        else:
            reads.wait()  # done already: only joins (and, staged, uploads)
            reading = np.zeros(0, dtype=np.int64)
        slot = cache.lookup(ids)
        resident = slot >= 0
        if reading.size:
            late = resident & np.isin(ids, reading)  # in a slot, bytes not there yet
            resident &= ~late
            cache.stats.hits -= int(late.sum())  # counted as what they are: misses
            cache.stats.misses += int(late.sum())
        self.served += int((~resident).sum())
        if not busy:
            missing = np.unique(ids[~resident])
            if missing.size:
                # Fill the cache for later steps, never into a slot this step computes with.
                # A failed fill is this mode's error (it has no other reads to report it).
                keep = np.unique(ids[resident])
                reads.read_ahead(cache.prefetch(missing, keep=keep), needed=True)
        if resident.all():
            return bank(x, mx.array(slot.astype(np.uint32)))
        low = self.copies(x, indices)
        if not resident.any():
            return low
        slot = np.where(resident, slot, slot[resident].flat[0]).astype(np.uint32)
        full = bank(x, mx.array(slot))
        return mx.where(mx.array(resident)[..., None], full, low)

    def stats(self) -> dict[str, int]:
        return {"skipped": 0, "lowbit": self.served}

    def reset_stats(self) -> None:
        self.served = 0


def make_copies(bank: nn.Module, bank_map: BankMap, source: ExpertSource, bits: int) -> nn.Module:
    """A twin of `bank` whose projections hold a `bits`-bit copy of every expert, quantized
    from the checkpoint's weights (read in batches, dequantized where they are quantized)."""
    by_proj: dict[str, list[int]] = {}
    for i, param in enumerate(bank_map.params):
        by_proj.setdefault(param.name.split(".", 1)[0], []).append(i)
    num = bank_map.num_experts
    # An expert's weights, dequantized to float32 at most.
    floats = sum(4 * p.output_dims * p.input_dims for p in map(bank.__getitem__, by_proj))
    batch = max(1, _BATCH_BYTES // max(1, floats, bank_map.expert_bytes))
    parts: dict[str, list[dict[str, mx.array]]] = {proj: [] for proj in by_proj}
    groups: dict[str, int] = {}
    for start in range(0, num, batch):
        experts = range(start, min(num, start + batch))
        views = [np.empty((len(experts), p.nbytes), dtype=np.uint8) for p in bank_map.params]
        loads = [(expert, row) for row, expert in enumerate(experts)]
        source.submit(bank_map, loads, views).result()
        for proj, members in by_proj.items():
            arrays = {
                bank_map.params[i].name.split(".", 1)[1]: _as_array(views[i], bank_map.params[i])
                for i in members
            }
            groups[proj], arrays = _requantize(getattr(bank, proj), arrays, bits)
            parts[proj].append(arrays)
    twin = copy.copy(bank)  # same class and activation; its projections replaced below
    for proj, chunks in parts.items():
        merged = {k: mx.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        mx.eval(merged)
        chunks.clear()
        setattr(twin, proj, _quantized_linear(merged, groups[proj], bits))
    return twin


def _as_array(view: np.ndarray, param: ParamMap) -> mx.array:
    """Bytes read for `len(view)` experts as an `[n, *shape]` array of the param's dtype."""
    return mx.array(view).view(param.dtype).reshape(len(view), *param.shape)


def _requantize(
    proj: nn.Module, arrays: dict[str, mx.array], bits: int
) -> tuple[int, dict[str, mx.array]]:
    """(group size, the low-bit weight, scales, biases and any bias) of a batch of experts."""
    if "scales" in arrays:
        weight = mx.dequantize(
            arrays["weight"],
            arrays["scales"],
            arrays.get("biases"),
            group_size=proj.group_size,
            bits=proj.bits,
            mode=proj.mode,
        )
    else:
        weight = arrays["weight"]
    group = lowbit_group(weight.shape[-1])
    q, scales, biases = mx.quantize(weight, group_size=group, bits=bits)
    out = {"weight": q, "scales": scales, "biases": biases}
    if "bias" in arrays:
        out["bias"] = arrays["bias"]
    mx.eval(out)
    return group, out


def _quantized_linear(arrays: dict[str, mx.array], group: int, bits: int) -> QuantizedSwitchLinear:
    """mlx-lm's own quantized projection over the stacked copies (no random init)."""
    linear = QuantizedSwitchLinear.__new__(QuantizedSwitchLinear)
    nn.Module.__init__(linear)
    linear.group_size = group
    linear.bits = bits
    linear.mode = "affine"
    linear.global_scale = None
    linear.weight, linear.scales, linear.biases = (
        arrays["weight"],
        arrays["scales"],
        arrays["biases"],
    )
    if "bias" in arrays:
        linear.bias = arrays["bias"]
    linear.freeze()
    return linear
