"""The offloaded expert bank: a drop-in for mlx-lm's `SwitchGLU`/`SwitchMLP` that keeps `C`
experts resident in slot tensors and reads the rest from disk when the router picks them.

Each MoE layer's state is split among owners of one resource each: the cache (which expert is in
which slot, and the policy), the slot memory (the tensors and their uploads), the reader (reads
in flight and the prediction of the next layer's experts), the device-side counts, and the miss
mode (what to do with experts that are not resident). The bank's forward pass only routes a step
to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._cache import ExpertCache
from ._checkpoint import BankMap
from ._errors import MoEError
from ._miss import MissMode
from ._observers import DeviceCounts, Observers
from ._reads import Reader
from ._slots import SlotMemory
from ._warmup import Warmup


@dataclass(slots=True)
class Layer:
    """One offloaded MoE layer: its owners, side by side."""

    map: BankMap
    cache: ExpertCache
    slots: SlotMemory
    reads: Reader
    miss: MissMode
    counts: DeviceCounts
    observers: Observers  # shared by every layer of the handle
    closed: bool = False  # the handle was closed: its files and reader threads are gone
    warmup: Warmup | None = None  # kernels compiling in helper processes (CUDA, fresh cache)


class OffloadedBank(nn.Module):
    """Replaces one expert bank; see the module docstring."""

    def __init__(self, bank: nn.Module, layer: Layer) -> None:
        super().__init__()
        self.bank = bank
        self._layer = layer

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        layer = self._layer
        if layer.closed:
            raise MoEError("this model's offload handle is closed: offload a new model to run it")
        observers = layer.observers
        if layer.warmup is not None:  # let the helpers finish compiling what this will run
            layer.warmup.join()
            layer.warmup = None
        # A layer holding every expert maps ids to slots on the device, with no host sync, for
        # one-token steps (whose k experts are distinct, so hits count as the synced path counts
        # them) unless an observer wants each step's ids on the host.
        if (
            layer.slots.table is not None
            and indices.size == indices.shape[-1]
            and not observers.steps
        ):
            layer.cache.record_hits(indices.size)
            out = self.bank(x, layer.slots.table[indices])
            if observers.counts:
                # The counts are computed with this layer's output, by the caller's own eval:
                # evaluated, they can be handed over from any thread (a server closes its
                # session on another thread than the one that generates).
                out = mx.depends(out, layer.counts.add(indices))
            return out
        # The one host sync of this layer; it brings the next layer's predicted experts along.
        ahead = layer.reads.ahead
        picks = None if ahead is None else ahead.picks(x, indices.size)
        predicted = None
        if picks is None:
            ids = np.array(indices)  # [..., k]
        else:
            mx.eval(indices, picks)
            ids = np.array(indices)
            predicted = np.unique(np.array(picks)).astype(np.int64)
        if observers.steps or observers.counts:
            observers.step(layer.map.index, ids, layer.map.num_experts)
        return layer.miss.forward(self.bank, layer, x, indices, ids, predicted)
