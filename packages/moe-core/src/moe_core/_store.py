"""The expert store: open checkpoint files and reader threads that read experts straight into the
slot buffers MLX computes on.

Reads use `os.preadv` (the GIL is released while the kernel copies), several experts at a time from
a small thread pool. The store counts bytes and seconds, in all and per bank, so its throughput can
be set beside the disk's own.

`ExpertSource` is what slot memory reads from: this store (the checkpoint or its pack) today; a
memory tier between the slots and storage (pinned host RAM on CUDA) is another source in front of
it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from crc32c import crc32c

from ._checkpoint import BankMap
from ._errors import CheckpointError


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
    bytes_read: int = 0
    read_seconds: float = 0.0  # batches' spans from submission to the last expert landed
    experts_read: int = 0


class ExpertSource(Protocol):
    """Where slot memory gets an expert's bytes from."""

    def submit(
        self, bank: BankMap, loads: list[tuple[int, int]], dests: list[np.ndarray]
    ) -> Future[None]:
        """Start reading each `(expert, slot)` of `loads` into row `slot` of every param's byte
        view in `dests`; the future is done (or failed) when all have landed."""
        ...

    def stats_of(self, bank: int) -> StoreStats:
        """What was read for MoE layer `bank`."""
        ...


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
        self._banks = {bank.index: StoreStats() for bank in banks}
        # Records whose checksum has been checked once: later reads of them are not summed again.
        self._checked = {
            bank.index: np.zeros(bank.num_experts, dtype=bool)
            for bank in banks
            if bank.checksums is not None
        }

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
                if (error := future.exception()) is not None:
                    errors.append(error)
                remaining[0] -= 1
                if remaining[0]:
                    return
                if not errors:  # each batch is charged to its own bank, when it has landed
                    seconds = time.perf_counter() - start
                    for stats in (self.stats, self._banks[bank.index]):
                        stats.bytes_read += bank.expert_bytes * len(loads)
                        stats.read_seconds += seconds
                        stats.experts_read += len(loads)
            if errors:
                done.set_exception(errors[0])
            else:
                done.set_result(None)

        for expert, slot in loads:
            self._pool.submit(self._read_expert, bank, expert, slot, dests).add_done_callback(
                finished
            )
        return done

    def stats_of(self, bank: int) -> StoreStats:
        return self._banks[bank]

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = StoreStats()
            self._banks = {index: StoreStats() for index in self._banks}

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
            checked = self._checked.get(bank.index)
            if checked is not None and not checked[expert] and bank.checksums is not None:
                if record_crc(*(d[slot] for d in dests)) != bank.checksums[expert]:
                    raise CheckpointError(
                        f"{file}: expert {expert} of {bank.path} fails its checksum (the file is "
                        "damaged; `moe verify` checks it all, `moe pack` writes it again)"
                    )
                checked[expert] = True
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
