"""The packed expert layout: one aligned, contiguous record per expert, so a miss is one read.

File layout: the magic `MOEPACK1`, a little-endian u64 header length, a JSON header (format
version, the source checkpoint's fingerprint, and per bank its module path, params, record size,
offset and each record's CRC-32C), then the records, every one starting on a 4 KiB boundary.
Packing reads expert byte ranges from the checkpoint with `pread`, never whole tensors, and writes
to a temporary file that is renamed into place only once complete. The expert store checks a
record's CRC-32C the first time it reads it; `verify_pack` checks them all.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mlx.nn as nn
import numpy as np

from ._atomic import atomic_write
from ._checkpoint import BankMap, find_banks, fingerprint, map_checkpoint
from ._errors import CheckpointError
from ._store import ExpertStore, record_crc

MAGIC = b"MOEPACK1"
VERSION = 2  # 2: a CRC-32C per record
ALIGN = 4096
PACK_NAME = "experts.moepack"
_BATCH_BYTES = 64 * 1024 * 1024


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _layout(maps: list[BankMap], source: str, header_room: int) -> dict:
    offset = _align(16 + header_room)
    banks = []
    for bank in maps:
        record = _align(bank.expert_bytes)
        banks.append(
            {
                "path": bank.path,
                "num_experts": bank.num_experts,
                "record_bytes": record,
                "offset": offset,
                # The widest CRC-32C until the records are written, so the header's room holds it.
                "checksums": [0xFFFFFFFF] * bank.num_experts,
                "params": [
                    {
                        "name": p.name,
                        "dtype": str(p.dtype),
                        "shape": list(p.shape),
                        "nbytes": p.nbytes,
                    }
                    for p in bank.params
                ],
            }
        )
        offset += record * bank.num_experts
    return {
        "format": "moe-pack",
        "version": VERSION,
        "fingerprint": source,
        "banks": banks,
        "end": offset,
    }


def pack(
    model: nn.Module,
    model_path: str | Path,
    out: str | Path | None = None,
    *,
    threads: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the packed layout of a lazily loaded model's experts; returns its path.

    `progress(done_bytes, total_bytes)` is called as records are written.
    """
    model_path = Path(model_path)
    out = Path(out) if out is not None else model_path / PACK_NAME
    maps = map_checkpoint(model_path, find_banks(model))
    source = fingerprint(model_path)
    # Size the header once with a generous guess for the offsets' digits; it is written again,
    # with the records' checksums, once they are known.
    draft = json.dumps(_layout(maps, source, 0)).encode()
    layout = _layout(maps, source, len(draft) + 1024)
    header = json.dumps(layout).encode()
    total = layout["end"]

    store = ExpertStore(maps, threads=threads)
    try:
        with atomic_write(out) as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            done = f.tell()
            for bank, entry in zip(maps, layout["banks"], strict=True):
                f.write(b"\0" * (entry["offset"] - done))
                record = entry["record_bytes"]
                batch = max(1, _BATCH_BYTES // record)
                staging = np.zeros((batch, record), dtype=np.uint8)
                dests, start = [], 0
                for p in bank.params:
                    dests.append(staging[:, start : start + p.nbytes])
                    start += p.nbytes
                for first in range(0, bank.num_experts, batch):
                    count = min(batch, bank.num_experts - first)
                    staging[:count] = 0
                    store.read(bank, [(first + i, i) for i in range(count)], dests)
                    for i in range(count):
                        entry["checksums"][first + i] = record_crc(staging[i, : bank.expert_bytes])
                    f.write(staging[:count].data.cast("B"))
                    done = entry["offset"] + (first + count) * record
                    if progress is not None:
                        progress(done, total)
            final = json.dumps(layout).encode()
            assert len(final) <= len(header)  # each checksum has at most the draft's digits
            f.seek(0)
            f.write(MAGIC + struct.pack("<Q", len(final)) + final)
    finally:
        store.close()
    return out


def read_layout(path: str | Path, source: str | None = None) -> dict:
    """The header of the packed file at `path`, checked: magic, version, complete file and, when
    `source` is given, the fingerprint of the checkpoint it must have been packed from."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
            if magic != MAGIC:
                raise CheckpointError(f"{path}: not a moe packed expert file")
            (length,) = struct.unpack("<Q", f.read(8))
            layout = json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read packed expert file ({e})") from None
    if layout.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: packed format version {layout.get('version')}, expected {VERSION}; "
            "run `moe pack` again"
        )
    if source is not None and layout.get("fingerprint") != source:
        raise CheckpointError(
            f"{path}: packed from checkpoint {layout.get('fingerprint')}, but this checkpoint is "
            f"{source}; run `moe pack` again"
        )
    if path.stat().st_size < layout["end"]:
        raise CheckpointError(f"{path}: truncated ({path.stat().st_size} of {layout['end']} bytes)")
    return layout


def verify_pack(
    path: str | Path,
    source: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Check every record of the packed file at `path` against its CRC-32C; the records that fail,
    one line each (empty when all are good). `progress(bytes)` is called as records are read.
    Raises `CheckpointError` when the header itself is bad (see `read_layout`)."""
    path = Path(path)
    layout = read_layout(path, source)
    bad = []
    with open(path, "rb", buffering=0) as f:
        for entry in layout["banks"]:
            record, sums = entry["record_bytes"], entry["checksums"]
            nbytes = sum(p["nbytes"] for p in entry["params"])
            batch = max(1, _BATCH_BYTES // record)
            buffer = np.empty((batch, record), dtype=np.uint8)
            for first in range(0, entry["num_experts"], batch):
                count = min(batch, entry["num_experts"] - first)
                f.seek(entry["offset"] + first * record)
                f.readinto(buffer[:count].data.cast("B"))
                for i in range(count):
                    if record_crc(buffer[i, :nbytes]) != sums[first + i]:
                        bad.append(
                            f"{path}: expert {first + i} of {entry['path']} fails its checksum"
                        )
                if progress is not None:
                    progress(count * record)
    return bad


def open_pack(path: str | Path, maps: list[BankMap], source: str) -> list[BankMap]:
    """Bank maps that read from the packed file at `path` instead of the checkpoint, with each
    record's checksum for the store to check on first read.

    Raises CheckpointError when the file is not a pack of this checkpoint, or is truncated.
    """
    path = Path(path)
    layout = read_layout(path, source)
    entries = {entry["path"]: entry for entry in layout["banks"]}
    packed = []
    for bank in maps:
        entry = entries.get(bank.path)
        described = [(p.name, str(p.dtype), list(p.shape), p.nbytes) for p in bank.params]
        if entry is None or described != [
            (p["name"], p["dtype"], p["shape"], p["nbytes"]) for p in entry["params"]
        ]:
            raise CheckpointError(f"{path}: holds no matching record layout for {bank.path}")
        base = entry["offset"] + entry["record_bytes"] * np.arange(bank.num_experts, dtype=np.int64)
        params, start = [], 0
        for p in bank.params:
            params.append(
                replace(
                    p,
                    files=(path,) * bank.num_experts,
                    offsets=base + start,
                    tensors=(f"{PACK_NAME}:{bank.path}.{p.name}",) * bank.num_experts,
                )
            )
            start += p.nbytes
        checksums = np.asarray(entry["checksums"], dtype=np.uint32)
        packed.append(BankMap(bank.index, bank.path, bank.num_experts, tuple(params), checksums))
    return packed
