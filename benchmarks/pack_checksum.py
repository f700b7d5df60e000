"""What the packed layout's CRC-32 per record costs on the read path: every expert of a pack read
through moe-core's expert store with the check (a fresh store: each record's first read) and
without it, alternated, from the page cache (the check's whole CPU cost shows) and cold (evicted
before each pass, as a miss reads), plus the speed of CRC-32C (the check) and of zlib's CRC-32
on one record.

    python benchmarks/pack_checksum.py --json benchmarks/results/pack_checksum.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_all(maps, threads: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads of this process) to read every expert of every bank into
    slot-like buffers, through a new store. CPU time is what the check adds whatever else the
    machine runs; wall time also carries the other processes' noise."""
    from moe_core._store import ExpertStore

    store = ExpertStore(maps, threads=threads)
    buffers = {
        bank.index: [np.empty((bank.num_experts, p.nbytes), dtype=np.uint8) for p in bank.params]
        for bank in maps
    }
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for bank in maps:
            store.read(bank, [(e, e) for e in range(bank.num_experts)], buffers[bank.index])
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        store.close()


def _speed(function, record: np.ndarray, repeats: int = 50) -> float:
    """GB/s of one checksum function over one record, on one thread."""
    function(record)
    start = time.perf_counter()
    for _ in range(repeats):
        function(record)
    return repeats * record.nbytes / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="where to build the checkpoint (default: temp)")
    args = parser.parse_args()

    from crc32c import crc32c
    from mlx_lm.utils import load_model

    import moe_core
    from moe_core._pack import open_pack
    from moe_testing import CheckpointSpec, build_checkpoint

    # Experts of Qwen3-Coder-Next's size: hidden 2048, expert width 512, 4-bit.
    spec = CheckpointSpec(
        "qwen3_moe", precision="q4", num_layers=2, hidden_size=2048, moe_intermediate_size=512,
        num_experts=64, top_k=8,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = build_checkpoint(spec, Path(tmp))
        model, _ = load_model(path, lazy=True)
        pack = moe_core.pack(model, path)
        geometry = moe_core.describe(model, path)
        checked = open_pack(pack, list(geometry.banks), geometry.fingerprint)
        unchecked = [dataclasses.replace(b, checksums=None) for b in checked]
        total = sum(b.num_experts * b.expert_bytes for b in checked)
        record = np.random.default_rng(0).integers(0, 256, checked[0].expert_bytes, np.uint8)
        speeds = {
            name: _speed(f, record) for name, f in (("crc32c", crc32c), ("zlib_crc32", zlib.crc32))
        }

        results = {}
        for regime in ("page_cache", "cold"):
            times = {"with_check": [], "without_check": []}
            cpu = {"with_check": [], "without_check": []}
            read_all(unchecked, args.threads)  # fill the page cache once
            for _ in range(args.rounds):
                for name, maps in (("with_check", checked), ("without_check", unchecked)):
                    if regime == "cold":
                        evict(pack)
                    wall, used = read_all(maps, args.threads)
                    times[name].append(wall)
                    cpu[name].append(used)
            med = {k: statistics.median(v) for k, v in times.items()}
            med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
            results[regime] = {
                "seconds": times,
                "cpu_seconds": cpu,
                "gb_s_with_check": total / med["with_check"] / 1e9,
                "gb_s_without_check": total / med["without_check"] / 1e9,
                "time_ratio": med["with_check"] / med["without_check"],
                "cpu_seconds_per_gb_added": (med_cpu["with_check"] - med_cpu["without_check"])
                / (total / 1e9),
            }
    doc = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average": os.getloadavg(),
        },
        "pack": {
            "experts": sum(b.num_experts for b in checked),
            "expert_bytes": checked[0].expert_bytes,
            "bytes": total,
        },
        "threads": args.threads,
        "rounds": args.rounds,
        "checksum_gb_s_one_thread": speeds,
        "results": results,
        "note": "ratios of medians of alternated passes; the check runs once per record per store",
    }
    text = json.dumps(doc, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
