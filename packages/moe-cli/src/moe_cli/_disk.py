"""The disk probe `inspect`, `serve`, `bench` and the benchmarks share: whole experts read at
random from the checkpoint as the expert store reads them (`pread`, one range per tensor), after
asking the kernel to drop those pages so the page cache does not flatter the disk."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# How long a probe may take.
DISK_TEST_SECONDS = 0.5


def measure_disk(banks, seconds: float = DISK_TEST_SECONDS, *, threads: int = 1) -> float:
    """MB/s reading random whole experts of `banks` (moe-core's bank maps) for about `seconds`,
    with `threads` readers (the expert store reads with several)."""
    handles: dict[Path, int] = {}
    for bank in banks:
        for param in bank.params:
            for file in set(param.files):
                if file not in handles:
                    handles[file] = os.open(file, os.O_RDONLY)
    start = time.perf_counter()
    deadline = start + seconds

    def reader(seed: int) -> int:
        rng, total = random.Random(seed), 0
        while time.perf_counter() < deadline:
            bank = rng.choice(banks)
            expert = rng.randrange(bank.num_experts)
            for param in bank.params:
                fd, offset = handles[param.files[expert]], int(param.offsets[expert])
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, offset, param.nbytes, os.POSIX_FADV_DONTNEED)
                total += len(os.pread(fd, param.nbytes, offset))
        return total

    try:
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(reader, range(threads)))
        elapsed = time.perf_counter() - start
    finally:
        for fd in handles.values():
            os.close(fd)
    return total / elapsed / 1e6


def evict(files) -> None:
    """Drop `files` from the page cache (no root needed), so the next read comes from the disk."""
    if not hasattr(os, "posix_fadvise"):
        return
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
