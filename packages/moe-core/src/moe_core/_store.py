"""The expert store: open checkpoint files and reader threads that read experts into host memory:
straight into the slot tensors MLX computes on (unified memory), or into host rows that are
uploaded to the GPU (CUDA; see `_host.py`).

Reads use `os.preadv` (the GIL is released while the kernel copies), several experts at a time from
a small thread pool. Reads into a host tier bypass the page cache (O_DIRECT of the aligned span
around each record, or the pages dropped after a plain read where the file system refuses it), so
the page cache never holds a second copy of what the tier holds. The store counts bytes and
seconds, in all and per bank, reads started ahead of need apart, so its throughput can be set
beside the disk's own.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from crc32c import crc32c

from ._checkpoint import BankMap
from ._errors import CheckpointError
from ._host import ALIGN, aligned_empty


def record_crc(*buffers) -> int:
    """CRC-32C of one expert's packed record (its params' bytes in order, without the padding).
    The CPU's own CRC32C instruction (SSE 4.2, ARMv8) sums several GB/s, ~10x zlib's CRC-32 here
    (benchmarks/pack_checksum.py), and the GIL is released while it runs."""
    crc = 0
    for buffer in buffers:
        crc = crc32c(buffer, crc)
    return crc


@dataclass(slots=True)
class StoreStats:
    bytes_read: int = 0  # all reads, those started ahead of need included
    read_seconds: float = 0.0  # batches' spans from submission to the last expert landed
    experts_read: int = 0
    ahead_bytes: int = 0  # of which read ahead of need (a prediction, a layer's completion)
    ahead_seconds: float = 0.0  # the spans of those batches (overlapped with compute)


class Rows(Protocol):
    """Host memory experts are read into, one row per expert."""

    def views(self, row: int) -> list[np.ndarray]:
        """Each param's bytes in `row`."""
        ...


class ParamRows:
    """Rows given as one `[rows, nbytes]` byte array per param (slot tensors' host views)."""

    __slots__ = ("arrays",)

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def views(self, row: int) -> list[np.ndarray]:
        return [a[row] for a in self.arrays]


class ExpertSource(Protocol):
    """Where slot memory gets an expert's bytes from."""

    def submit(
        self,
        bank: BankMap,
        loads: list[tuple[int, int]],
        dests: Rows | list[np.ndarray],
        *,
        ahead: bool = False,
        direct: bool = False,
    ) -> Future[None]:
        """Start reading each `(expert, row)` of `loads` into `dests`; the future is done (or
        failed) when all have landed. `ahead`: no step waits for it yet (counted apart);
        `direct`: keep it out of the page cache (`dests` are `HostRows`)."""
        ...

    def stats_of(self, bank: int) -> StoreStats:
        """What was read for MoE layer `bank`."""
        ...


class ExpertStore:
    """Owns the file descriptors of a checkpoint's shards and the pool that reads from them."""

    def __init__(self, banks: list[BankMap], *, threads: int = 4) -> None:
        files = {f for bank in banks for p in bank.params for f in p.files}
        self._fds: dict[Path, int] = {}
        self._direct: dict[Path, int | None] = {}  # O_DIRECT descriptors, opened on first use
        try:
            for f in sorted(files):
                self._fds[f] = os.open(f, os.O_RDONLY)
        except OSError as e:
            self.close()
            raise CheckpointError(f"{e.filename}: cannot open shard ({e.strerror})") from None
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="moe-read")
        self._lock = threading.Lock()
        self.stats = StoreStats()
        self._banks = {bank.index: StoreStats() for bank in banks}
        # Records whose checksum has been checked once: later reads of them are not summed again.
        self._checked = {
            bank.index: np.zeros(bank.num_experts, dtype=bool)
            for bank in banks
            if bank.checksums is not None
        }

    def read(self, bank: BankMap, loads: list[tuple[int, int]], dests) -> None:
        """Read each `(expert, row)` of `loads` into `dests` (`Rows`, or one `[rows, nbytes]`
        byte array per param)."""
        self.submit(bank, loads, dests).result()

    def submit(
        self,
        bank: BankMap,
        loads: list[tuple[int, int]],
        dests,
        *,
        ahead: bool = False,
        direct: bool = False,
    ) -> Future[None]:
        """Start reading `loads` on the reader threads; the future is done when all have landed."""
        done: Future[None] = Future()
        if not loads:
            done.set_result(None)
            return done
        rows = dests if hasattr(dests, "views") else ParamRows(dests)
        start = time.perf_counter()
        remaining = [len(loads)]
        errors: list[BaseException] = []

        def finished(future: Future[None]) -> None:
            with self._lock:
                if (error := future.exception()) is not None:
                    errors.append(error)
                remaining[0] -= 1
                if remaining[0]:
                    return
                if not errors:  # each batch is charged to its own bank, when it has landed
                    seconds = time.perf_counter() - start
                    nbytes = bank.expert_bytes * len(loads)
                    for stats in (self.stats, self._banks[bank.index]):
                        stats.bytes_read += nbytes
                        stats.read_seconds += seconds
                        stats.experts_read += len(loads)
                        if ahead:
                            stats.ahead_bytes += nbytes
                            stats.ahead_seconds += seconds
            if errors:
                done.set_exception(errors[0])
            else:
                done.set_result(None)

        read = self._read_direct if direct else self._read_expert
        for expert, row in loads:
            self._pool.submit(read, bank, expert, row, rows).add_done_callback(finished)
        return done

    def stats_of(self, bank: int) -> StoreStats:
        return self._banks[bank]

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = StoreStats()
            self._banks = {index: StoreStats() for index in self._banks}

    def _read_expert(self, bank: BankMap, expert: int, row: int, rows: Rows) -> None:
        dests = rows.views(row)
        if bank.contiguous:
            # One record per expert (packed layout): one syscall scatters it into every param.
            first = bank.params[0]
            file = first.files[expert]
            buffers: list[Any] = dests  # ndarrays are buffers
            got = os.preadv(self._fds[file], buffers, int(first.offsets[expert]))
            if got != bank.expert_bytes:
                raise CheckpointError(
                    f"{file}: expert {expert} of {bank.path} gave {got} of {bank.expert_bytes} bytes "
                    "(was the file truncated?)"
                )
            self._check_record(bank, expert, dests)
            return
        for param, dest in zip(bank.params, dests, strict=True):
            file = param.files[expert]
            into: list[Any] = [dest]  # an ndarray is a buffer
            got = os.preadv(self._fds[file], into, int(param.offsets[expert]))
            if got != param.nbytes:
                raise CheckpointError(
                    f"{file}: tensor {param.tensors[expert]} gave {got} of {param.nbytes} bytes "
                    f"for expert {expert} (was the shard truncated?)"
                )

    def _read_direct(self, bank: BankMap, expert: int, row: int, rows) -> None:
        """Read an expert into `HostRows` bypassing the page cache: O_DIRECT reads of the aligned
        span around each record (the bytes start `shift` into the row's region), or, where the
        file system refuses O_DIRECT, a plain read whose pages are dropped after it."""
        regions = rows.regions(row)
        spans = (
            [(bank.params[0], bank.expert_bytes)]
            if bank.contiguous
            else [(p, p.nbytes) for p in bank.params]
        )
        shifts = []
        for (param, nbytes), region in zip(spans, regions, strict=True):
            file, offset = param.files[expert], int(param.offsets[expert])
            fd = self._direct_fd(file)
            shift = offset % ALIGN if fd is not None else 0
            if fd is not None:
                length = -(-(shift + nbytes) // ALIGN) * ALIGN
                got = os.preadv(fd, [region[:length]], offset - shift) - shift
            else:
                got = os.preadv(self._fds[file], [region[:nbytes]], offset)
                os.posix_fadvise(self._fds[file], offset, nbytes, os.POSIX_FADV_DONTNEED)
            if got < nbytes:
                raise CheckpointError(
                    f"{file}: expert {expert} of {bank.path} gave {max(got, 0)} of {nbytes} "
                    "bytes (was the file truncated?)"
                )
            shifts.append(shift)
        rows.shift[row] = shifts
        if bank.contiguous:
            self._check_record(bank, expert, rows.views(row))

    def _direct_fd(self, file: Path) -> int | None:
        if file not in self._direct:
            with self._lock:
                if file not in self._direct:
                    try:
                        fd = os.open(file, os.O_RDONLY | os.O_DIRECT)
                    except (OSError, AttributeError):
                        fd = None
                    if fd is not None and not _direct_reads(fd):
                        os.close(fd)
                        fd = None
                    self._direct[file] = fd
        return self._direct[file]

    def _check_record(self, bank: BankMap, expert: int, dests: list[np.ndarray]) -> None:
        checked = self._checked.get(bank.index)
        if checked is not None and not checked[expert] and bank.checksums is not None:
            if record_crc(*dests) != bank.checksums[expert]:
                raise CheckpointError(
                    f"{bank.params[0].files[expert]}: expert {expert} of {bank.path} fails its "
                    "checksum (the file is damaged; `moe verify` checks it all, `moe pack` "
                    "writes it again)"
                )
            checked[expert] = True

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for fd in [*self._fds.values(), *self._direct.values()]:
            if fd is not None:
                os.close(fd)
        self._fds.clear()
        self._direct.clear()


def _direct_reads(fd: int) -> bool:
    """Whether aligned O_DIRECT reads work on this descriptor's file system."""
    probe = aligned_empty(ALIGN)
    try:
        into: list[Any] = [probe]  # an ndarray is a buffer
        os.preadv(fd, into, 0)
    except OSError:
        return False
    return True
