"""The expert store: open checkpoint files and reader threads that read experts straight into the
slot buffers MLX computes on.

Reads use `os.preadv` (the GIL is released while the kernel copies), several experts at a time from
a small thread pool. The store counts bytes and seconds so its throughput can be set beside the
disk's own.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from ._checkpoint import BankMap
from ._errors import CheckpointError


@dataclass(slots=True)
class StoreStats:
    bytes_read: int = 0
    read_seconds: float = 0.0
    experts_read: int = 0


class ExpertStore:
    """Owns the file descriptors of a checkpoint's shards and the pool that reads from them."""

    def __init__(self, banks: list[BankMap], *, threads: int = 4) -> None:
        files = {f for bank in banks for p in bank.params for f in p.files}
        self._fds: dict[Path, int] = {}
        try:
            for f in sorted(files):
                self._fds[f] = os.open(f, os.O_RDONLY)
        except OSError as e:
            self.close()
            raise CheckpointError(f"{e.filename}: cannot open shard ({e.strerror})") from None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="moe-read")
        self._lock = threading.Lock()
        self.stats = StoreStats()

    def read(self, bank: BankMap, loads: list[tuple[int, int]], dests: list[np.ndarray]) -> None:
        """Read each `(expert, slot)` of `loads` into row `slot` of every param's byte view."""
        self.submit(bank, loads, dests).result()

    def submit(
        self, bank: BankMap, loads: list[tuple[int, int]], dests: list[np.ndarray]
    ) -> Future[None]:
        """Start reading `loads` on the reader threads; the future is done when all have landed."""
        done: Future[None] = Future()
        if not loads:
            done.set_result(None)
            return done
        start = time.perf_counter()
        remaining = [len(loads)]
        errors: list[BaseException] = []

        def finished(future: Future[None]) -> None:
            with self._lock:
                if future.exception() is not None:
                    errors.append(future.exception())
                remaining[0] -= 1
                if remaining[0]:
                    return
                self.stats.bytes_read += bank.expert_bytes * len(loads)
                self.stats.read_seconds += time.perf_counter() - start
                self.stats.experts_read += len(loads)
            if errors:
                done.set_exception(errors[0])
            else:
                done.set_result(None)

        for expert, slot in loads:
            self._pool.submit(self._read_expert, bank, expert, slot, dests).add_done_callback(
                finished
            )
        return done

    def _read_expert(self, bank: BankMap, expert: int, slot: int, dests: list[np.ndarray]) -> None:
        if bank.contiguous:
            # One record per expert (packed layout): one syscall scatters it into every slot tensor.
            first = bank.params[0]
            file = first.files[expert]
            got = os.preadv(self._fds[file], [d[slot] for d in dests], int(first.offsets[expert]))
            if got != bank.expert_bytes:
                raise CheckpointError(
                    f"{file}: expert {expert} of {bank.path} gave {got} of {bank.expert_bytes} bytes "
                    "(was the file truncated?)"
                )
            return
        for param, dest in zip(bank.params, dests, strict=True):
            file = param.files[expert]
            got = os.preadv(self._fds[file], [dest[slot]], int(param.offsets[expert]))
            if got != param.nbytes:
                raise CheckpointError(
                    f"{file}: tensor {param.tensors[expert]} gave {got} of {param.nbytes} bytes "
                    f"for expert {expert} (was the shard truncated?)"
                )

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


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
