"""Slot memory: the `[C, ...]` tensors one offloaded bank computes on, one per expert parameter,
and the host memory experts are read into.

On unified memory (CPU, Metal) the host memory is a view of the tensors themselves, so a read
lands where MLX computes. Otherwise (CUDA) experts are read into host rows (a staging row per
slot, or the host tier, `_host.py`) and an uploader copies the rows of a step to their slots in
one batch. Once a layer holds every one of its experts, the slot memory also keeps the
expert->slot table on the device, so the router's ids become slots with no host sync.
"""

from __future__ import annotations

import time
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ._checkpoint import BankMap
from ._host import HostTier, Staging
from ._store import ParamRows, Rows


class Uploader(Protocol):
    """Copies between host rows and one bank's slot tensors (CUDA: `_cuda.CUDAUploader`)."""

    def to_device(self, param: int, slot: int, src: np.ndarray) -> None:
        """Copy `src` into slot `slot` of param `param` by the next `flush`."""
        ...

    def to_host(self, param: int, slot: int, dst: np.ndarray) -> None:
        """Copy slot `slot` of param `param` into `dst`, before any later `to_device`."""
        ...

    def flush(self) -> None:
        """Finish every copy asked for."""
        ...


class SlotMemory:
    """Owns one bank's slot tensors, the host memory experts are read into, and the uploads
    between them."""

    __slots__ = (
        "held",
        "host",
        "moved",
        "pending",
        "rows",
        "staged",
        "table",
        "upload_seconds",
        "uploaded_bytes",
        "uploader",
        "views",
    )

    def __init__(self, bank: nn.Module, bank_map: BankMap, capacity: int, *, direct: bool) -> None:
        self.views: list[np.ndarray] = []  # direct: per param, [C, nbytes] host bytes of its slots
        targets = []
        for param in bank_map.params:
            proj, name = param.name.split(".", 1)
            array, host = slot_tensor(capacity, param.shape, param.dtype, direct=direct)
            setattr(getattr(bank, proj), name, array)
            if host is not None:  # direct
                self.views.append(host)
            targets.append((getattr(bank, proj), name))
        # (projection, param) whose slots are uploaded from host rows, when not direct
        self.staged: list[tuple[nn.Module, str]] | None = None if direct else targets
        self.rows: Rows = ParamRows(self.views)  # where reads land (staged: the host side's rows)
        self.host: Staging | HostTier | None = None
        self.uploader: Uploader | None = None
        self.held = np.full(capacity, -1, dtype=np.int64)  # expert each slot holds, staged
        self.pending: list[tuple[int, int]] = []  # (slot, row) to upload once reads landed
        self.moved = False  # copies were asked for since the last flush
        self.uploaded_bytes = 0
        self.upload_seconds = 0.0
        self.table: mx.array | None = None  # [E] uint32 slot of every expert, all resident

    def stage_through(self, host: Staging | HostTier, uploader: Uploader) -> None:
        """Staged: read experts into `host`'s rows and upload them with `uploader`."""
        self.host, self.uploader, self.rows = host, uploader, host.rows

    @property
    def direct_io(self) -> bool:
        """Reads should bypass the page cache (they land in a host tier)."""
        return self.host is not None and self.host.direct_io

    def stage(self, loads: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """`(expert, slot)` loads are planned: the `(expert, row)` reads into `rows` they need.
        Staged, their uploads wait for `upload` (once the reads have landed)."""
        if self.host is None:
            return loads
        assert self.uploader is not None  # set with the host side
        reads, uploads, demote = self.host.plan(loads, self.held)
        for slot, row in demote:  # copied down before anything overwrites the slot
            for param, dst in enumerate(self.rows.views(row)):
                self.uploader.to_host(param, slot, dst)
            self.moved = True
        for expert, slot in loads:
            self.held[slot] = expert
        self.pending.extend(uploads)
        return reads

    def discard(self, loads: list[tuple[int, int]]) -> None:
        """Reads for `loads` failed: nothing of theirs is uploaded, their rows hold nothing."""
        if self.host is None:
            return
        dropped = {slot for _, slot in loads}
        self.pending = [(slot, row) for slot, row in self.pending if slot not in dropped]
        self.held[list(dropped)] = -1
        self.host.forget(np.array([expert for expert, _ in loads], dtype=np.int64))

    def upload(self) -> None:
        """Staged: copy the rows read since the last upload to their slots, as one batch."""
        if self.host is None or not (self.pending or self.moved):
            return
        assert self.uploader is not None  # set with the host side
        start = time.perf_counter()
        pending, self.pending, self.moved = self.pending, [], False
        for slot, row in pending:
            for param, src in enumerate(self.rows.views(row)):
                self.uploader.to_device(param, slot, src)
                self.uploaded_bytes += src.nbytes
        self.uploader.flush()
        self.host.uploaded()
        self.upload_seconds += time.perf_counter() - start

    def resolve_on_device(self, slot_of: np.ndarray) -> None:
        """Every expert is resident and stays so: map ids to slots on the device from now on."""
        self.table = mx.array(slot_of.astype(np.uint32))


class MLXUploader:
    """Uploads through MLX (an `mx.array` of the rows, scattered into the slots): any backend,
    ~1.7 GB/s on CUDA; the CPU tests' stand-in for `_cuda.CUDAUploader`."""

    __slots__ = ("queued", "targets")

    def __init__(self, targets: list[tuple[nn.Module, str]]) -> None:
        self.targets = targets
        self.queued: list[list[tuple[int, np.ndarray]]] = [[] for _ in targets]

    def to_device(self, param: int, slot: int, src: np.ndarray) -> None:
        self.queued[param].append((slot, src))

    def to_host(self, param: int, slot: int, dst: np.ndarray) -> None:
        proj, name = self.targets[param]
        array = getattr(proj, name)[slot]
        viewed = array.view(mx.uint16) if array.dtype == mx.bfloat16 else array
        dst[:] = np.array(viewed).reshape(-1).view(np.uint8)

    def flush(self) -> None:
        for (proj, name), queued in zip(self.targets, self.queued, strict=True):
            if queued:
                slots = [slot for slot, _ in queued]
                upload(getattr(proj, name), np.stack([src for _, src in queued]), slots, rows=True)
                queued.clear()


def slot_tensor(
    capacity: int, shape: tuple[int, ...], dtype: mx.Dtype, *, direct: bool = True
) -> tuple[mx.array, np.ndarray | None]:
    """A zeroed `[capacity, *shape]` array and, with `direct`, a writable `[capacity, nbytes]`
    host byte view of it.

    With `direct` (unified memory: CPU, Metal) the view aliases the array's own memory, so
    experts are read straight into what MLX computes on. Otherwise (CUDA) there is no view:
    experts reach the array through an uploader.
    """
    array = mx.zeros((capacity, *shape), dtype=dtype)
    mx.eval(array)
    if not direct:
        return array, None
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


def upload(array: mx.array, host: np.ndarray, slots: list[int], *, rows: bool = False) -> mx.array:
    """`array` with rows `slots` replaced by host bytes, as one batched copy: `host[slots]`
    (a `[C, nbytes]` mirror), or with `rows` `host` itself (`[len(slots), nbytes]`)."""
    index = np.asarray(slots, dtype=np.int64)
    data = host if rows else host[index]
    values = mx.array(data).view(array.dtype).reshape(len(slots), *array.shape[1:])
    array[mx.array(index)] = values
    return array
