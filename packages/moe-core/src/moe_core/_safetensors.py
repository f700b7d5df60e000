"""Safetensors headers: the 8-byte length, the JSON table, and where each tensor's bytes lie.

Only headers are read, never tensor data: `mx.load` would read a whole stacked expert tensor into
memory as soon as any slice of it is evaluated.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ._errors import CheckpointError

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip

_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor of a shard: its dtype, shape and absolute byte range in the file."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first byte in `file`
    nbytes: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor table of one shard, checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: header length {length} is past the end of the file")
            raw = f.read(length)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: shard is missing") from None
    try:
        table = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e})") from None
    data_start = 8 + length
    entries = {}
    for name, info in table.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name} has unknown dtype {dtype}")
        nbytes = DTYPE_SIZES[dtype]
        for dim in shape:
            nbytes *= dim
        if end - begin != nbytes:
            raise CheckpointError(
                f"{path}: tensor {name} spans {end - begin} bytes, its dtype and shape need {nbytes}"
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: tensor {name} ends at byte {data_start + end} but the file has {size} "
                "bytes (truncated shard?)"
            )
        entries[name] = TensorEntry(path, name, dtype, shape, data_start + begin, nbytes)
    return entries


def read_tensor_table(model_path: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory, from its index file or its lone shards."""
    model_path = Path(model_path)
    index = model_path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        shards = sorted(set(weight_map.values()))
    else:
        weight_map = None
        shards = sorted(p.name for p in model_path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(f"{model_path}: no *.safetensors files")
    table: dict[str, TensorEntry] = {}
    for shard in shards:
        table.update(read_header(model_path / shard))
    if weight_map is not None:
        for name, shard in weight_map.items():
            entry = table.get(name)
            if entry is None or entry.file.name != os.path.basename(shard):
                raise CheckpointError(
                    f"{model_path / shard}: tensor {name} is listed in the index but not in the shard"
                )
    return table
