"""Checkpoint map: for each expert bank of a model and each expert, where its bytes lie on disk.

Banks are found by walking the module tree for mlx-lm's `SwitchGLU`/`SwitchMLP`, wherever they
sit. Each bank's per-expert tensors (weight, scales, biases, bias of every projection) are looked up
in the safetensors headers, stacked `(E, ...)` as mlx-lm saves them or one tensor per expert as the
original checkpoints store them, in any shard.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import (
    QuantizedSwitchLinear,
    SwitchGLU,
    SwitchLinear,
    SwitchMLP,
)

from ._errors import CheckpointError, UnsupportedModelError
from ._safetensors import DTYPE_SIZES, TensorEntry, read_tensor_table

BANK_TYPES = (SwitchGLU, SwitchMLP)
_LINEAR_TYPES = (SwitchLinear, QuantizedSwitchLinear)

# How original checkpoints name a bank's projections per expert (Mixtral's w1/w2/w3, ...).
_PROJ_ALIASES = {
    "gate_proj": ("gate_proj", "w1"),
    "down_proj": ("down_proj", "w2"),
    "up_proj": ("up_proj", "w3"),
    "fc1": ("fc1", "w1"),
    "fc2": ("fc2", "w2"),
}

_MX_TO_ST = {
    mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32",
    mx.uint8: "U8", mx.int8: "I8", mx.int32: "I32", mx.uint16: "U16", mx.int16: "I16",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ParamMap:
    """Where one per-expert parameter (e.g. `gate_proj.scales`) of one bank lies, expert by expert."""

    name: str  # "gate_proj.weight"
    dtype: mx.Dtype
    shape: tuple[int, ...]  # one expert's shape
    nbytes: int  # one expert's bytes
    files: tuple[Path, ...]  # [E] file of each expert
    offsets: np.ndarray  # [E] absolute byte offset of each expert in its file
    tensors: tuple[str, ...]  # [E] checkpoint tensor name of each expert (for messages)


@dataclass(frozen=True, slots=True)
class BankMap:
    """One MoE layer's expert bank: its module path and per-expert parameters."""

    index: int  # ordinal among MoE layers
    path: str  # module path, e.g. "model.layers.3.mlp.switch_mlp"
    num_experts: int
    params: tuple[ParamMap, ...]
    contiguous: bool = field(init=False)  # each expert's params back to back in one file
    # [E] CRC-32C of each expert's record, where the source keeps one (the packed layout)
    checksums: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        first, offsets, contiguous = self.params[0], self.params[0].offsets, True
        for before, param in itertools.pairwise(self.params):
            offsets = offsets + before.nbytes
            contiguous &= param.files == first.files and np.array_equal(param.offsets, offsets)
        object.__setattr__(self, "contiguous", contiguous)

    @property
    def expert_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)


def find_banks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every expert bank in the model, in module order, with its dotted path."""
    banks: list[tuple[str, nn.Module]] = [
        (path, m) for path, m in model.named_modules() if isinstance(m, BANK_TYPES)
    ]
    # named_modules lists children before parents in reverse; sort by layer order of the path.
    banks.sort(key=lambda item: [int(t) if t.isdigit() else t for t in item[0].split(".")])
    if not banks:
        raise UnsupportedModelError(
            f"{type(model).__module__}: no expert banks (SwitchGLU/SwitchMLP) found; "
            "is this a Mixture-of-Experts model?"
        )
    return banks


def flat_parameters(module: nn.Module) -> list[tuple[str, mx.array]]:
    """The module's arrays as (dotted name, array) pairs; mlx types `tree_flatten`'s result as a
    list or a dict, and with no `destination` it is the list."""
    return cast("list[tuple[str, mx.array]]", tree_flatten(module.parameters()))


def bank_params(path: str, bank: nn.Module) -> dict[str, mx.array]:
    """The bank's per-expert arrays, keyed `proj.param`, checked to lead with the expert axis."""
    params: dict[str, mx.array] = {}
    num_experts = None
    for name, child in bank.children().items():
        if not isinstance(child, _LINEAR_TYPES):
            continue
        if (
            isinstance(child, QuantizedSwitchLinear)
            and getattr(child, "global_scale", None) is not None
        ):
            raise UnsupportedModelError(
                f"{path}.{name}: quantization mode {child.mode!r} with a global scale is not supported"
            )
        for pname, arr in flat_parameters(child):
            if num_experts is None:
                num_experts = arr.shape[0]
            if arr.ndim < 1 or arr.shape[0] != num_experts:
                raise UnsupportedModelError(
                    f"{path}.{name}.{pname}: shape {tuple(arr.shape)} has no leading expert axis"
                )
            params[f"{name}.{pname}"] = arr
    if not params:
        raise UnsupportedModelError(f"{path}: expert bank has no SwitchLinear projections")
    return params


def map_checkpoint(
    model_path: Path,
    banks: list[tuple[str, nn.Module]],
    table: dict[str, TensorEntry] | None = None,
) -> list[BankMap]:
    """Locate every expert's bytes for `banks` in the checkpoint at `model_path`."""
    table = read_tensor_table(model_path) if table is None else table
    maps = []
    for index, (path, bank) in enumerate(banks):
        params = bank_params(path, bank)
        num_experts = next(iter(params.values())).shape[0]
        maps.append(
            BankMap(
                index,
                path,
                num_experts,
                tuple(_map_param(table, path, name, arr) for name, arr in params.items()),
            )
        )
    return maps


def _map_param(table: dict[str, TensorEntry], path: str, name: str, arr: mx.array) -> ParamMap:
    num_experts, shape = arr.shape[0], tuple(arr.shape[1:])
    dtype = _MX_TO_ST.get(arr.dtype)
    if dtype is None:
        raise UnsupportedModelError(f"{path}.{name}: dtype {arr.dtype} is not supported")
    nbytes = DTYPE_SIZES[dtype] * int(np.prod(shape, dtype=np.int64))
    stacked = table.get(f"{path}.{name}")
    if stacked is not None:
        _check(stacked, dtype, (num_experts, *shape))
        files = (stacked.file,) * num_experts
        offsets = stacked.offset + nbytes * np.arange(num_experts, dtype=np.int64)
        tensors = (stacked.name,) * num_experts
        return ParamMap(name, arr.dtype, shape, nbytes, files, offsets, tensors)

    entries = _per_expert_entries(table, path, name, num_experts)
    for entry in entries:
        _check(entry, dtype, shape)
    return ParamMap(
        name,
        arr.dtype,
        shape,
        nbytes,
        tuple(e.file for e in entries),
        np.array([e.offset for e in entries], dtype=np.int64),
        tuple(e.name for e in entries),
    )


def _per_expert_entries(
    table: dict[str, TensorEntry], path: str, name: str, num_experts: int
) -> list[TensorEntry]:
    proj, param = name.split(".", 1)
    parent = path.rsplit(".", 1)[0]
    tried = [f"{path}.{name}"]
    for alias in _PROJ_ALIASES.get(proj, (proj,)):
        pattern = f"{parent}.experts.{{}}.{alias}.{param}"
        tried.append(pattern.format("{i}"))
        if pattern.format(0) in table:
            entries = []
            for i in range(num_experts):
                entry = table.get(pattern.format(i))
                if entry is None:
                    raise CheckpointError(
                        f"tensor {pattern.format(i)} is missing from the checkpoint "
                        f"(expert {i} of {num_experts})"
                    )
                entries.append(entry)
            return entries
    raise CheckpointError(
        f"{path}.{name}: no checkpoint tensor holds these experts (looked for {', '.join(tried)})"
    )


def _check(entry: TensorEntry, dtype: str, shape: tuple[int, ...]) -> None:
    if entry.dtype != dtype or entry.shape != shape:
        raise CheckpointError(
            f"{entry.file}: tensor {entry.name} is {entry.dtype}{list(entry.shape)}, "
            f"the model expects {dtype}{list(shape)}"
        )


def fingerprint(model_path: str | Path) -> str:
    """A stable id of a checkpoint: its config and its tensor table (names, dtypes, shapes)."""
    return checkpoint_fingerprint(Path(model_path))


def checkpoint_fingerprint(model_path: Path, table: dict[str, TensorEntry] | None = None) -> str:
    """`fingerprint`, from a tensor table already read (`describe` reads the headers once)."""
    config = json.loads((model_path / "config.json").read_text())
    table = read_tensor_table(model_path) if table is None else table
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(table):
        entry = table[name]
        digest.update(f"{name}:{entry.dtype}:{list(entry.shape)};".encode())
    return digest.hexdigest()[:16]


_LAYER = re.compile(r"\.(\d+)\.")


def layer_number(path: str) -> int | None:
    """The decoder layer number in a module path (`model.layers.3.mlp...` -> 3)."""
    match = _LAYER.search(f".{path}.")
    return int(match.group(1)) if match else None
