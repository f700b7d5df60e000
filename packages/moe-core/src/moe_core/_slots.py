"""Slot memory: the `[C, ...]` tensors one offloaded bank computes on, one per expert parameter,
and the host bytes experts are read into.

On unified memory (CPU, Metal) those host bytes are a view of the tensors themselves, so a read
lands where MLX computes. Otherwise (CUDA) they are a staging mirror whose rows are uploaded in one
batch per step. Once a layer holds every one of its experts, the slot memory also keeps the
expert->slot table on the device, so the router's ids become slots with no host sync.
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._checkpoint import BankMap


class SlotMemory:
    """Owns one bank's slot tensors, their host views and the uploads between them."""

    __slots__ = ("staged", "table", "unsent", "views")

    def __init__(self, bank: nn.Module, bank_map: BankMap, capacity: int, *, direct: bool) -> None:
        self.views: list[np.ndarray] = []  # per param: [C, nbytes] host bytes of its slots
        targets = []
        for param in bank_map.params:
            proj, name = param.name.split(".", 1)
            array, host = slot_tensor(capacity, param.shape, param.dtype, direct=direct)
            setattr(getattr(bank, proj), name, array)
            self.views.append(host)
            targets.append((getattr(bank, proj), name))
        # (projection, param) whose slots are uploaded from the views, when not direct
        self.staged: list[tuple[nn.Module, str]] | None = None if direct else targets
        self.unsent: list[int] = []  # staged slots read but not uploaded yet
        self.table: mx.array | None = None  # [E] uint32 slot of every expert, all resident

    def filled(self, slots: Iterable[int]) -> None:
        """`slots` get new bytes in their host views; staged, the next `upload` (once their reads
        are joined) sends them."""
        if self.staged is not None:
            self.unsent.extend(slots)

    def discard(self, slots: Iterable[int]) -> None:
        """Reads into `slots` failed: nothing of theirs is uploaded."""
        dropped = set(slots)
        self.unsent = [slot for slot in self.unsent if slot not in dropped]

    def upload(self) -> None:
        """Staged: copy the rows read since the last upload to the device, one batch per param."""
        if self.staged is None or not self.unsent:
            return
        slots, self.unsent = self.unsent, []
        for (proj, name), host in zip(self.staged, self.views, strict=True):
            upload(getattr(proj, name), host, slots)

    def resolve_on_device(self, slot_of: np.ndarray) -> None:
        """Every expert is resident and stays so: map ids to slots on the device from now on."""
        self.table = mx.array(slot_of.astype(np.uint32))


def slot_tensor(
    capacity: int, shape: tuple[int, ...], dtype: mx.Dtype, *, direct: bool = True
) -> tuple[mx.array, np.ndarray]:
    """A zeroed `[capacity, *shape]` array and a writable `[capacity, nbytes]` host byte buffer.

    With `direct` (unified memory: CPU, Metal) the buffer is a view of the array's own memory, so
    experts are read straight into what MLX computes on. Otherwise (CUDA) it is a host staging
    mirror whose rows `upload` copies to the device in one batch.
    """
    array = mx.zeros((capacity, *shape), dtype=dtype)
    mx.eval(array)
    if not direct:
        nbytes = array.nbytes // capacity
        return array, np.zeros((capacity, nbytes), dtype=np.uint8)
    # numpy has no bfloat16: look at those bits as uint16 (a view of the same buffer).
    viewed = array.view(mx.uint16) if dtype == mx.bfloat16 else array
    mx.eval(viewed)
    host = np.array(viewed, copy=False).reshape(capacity, -1).view(np.uint8)
    # The view must alias MLX's buffer; a copy would silently compute on zeros.
    host[0, :1] = 1
    aliased = bool(array.reshape(capacity, -1).view(mx.uint8)[0, 0].item() == 1)
    host[0, :1] = 0
    if not aliased:
        raise RuntimeError("this MLX backend does not expose array memory to the host for writing")
    return array, host


def upload(array: mx.array, host: np.ndarray, slots: list[int]) -> mx.array:
    """`array` with rows `slots` replaced by the host mirror's bytes, as one batched copy."""
    index = np.asarray(slots, dtype=np.int64)
    rows = mx.array(host[index]).view(array.dtype).reshape(len(slots), *array.shape[1:])
    array[mx.array(index)] = rows
    return array
