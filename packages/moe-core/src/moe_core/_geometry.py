"""`describe(model, path) -> Geometry`: what a model's experts look like and where their bytes lie,
from the model's modules and the checkpoint's safetensors headers, read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from ._checkpoint import (
    _LINEAR_TYPES,
    BankMap,
    bank_params,
    checkpoint_fingerprint,
    find_banks,
    flat_parameters,
    map_checkpoint,
)
from ._safetensors import read_tensor_table

_LINEAR_STATE = ("linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim")


@dataclass(frozen=True, slots=True)
class Geometry:
    """A model's expert geometry, read from the model and the checkpoint headers only."""

    path: Path  # the checkpoint directory
    fingerprint: str  # config and tensor table, see `fingerprint`
    banks: tuple[BankMap, ...]
    top_k: tuple[int | None, ...]  # experts a token picks, per MoE layer
    dense_bytes: int
    vocab_size: int = 0
    # Float32 recurrent state of one token in a linear-attention layer (Qwen3-Next's gated delta
    # net): mlx-lm's reference implementation keeps one per prompt token while it prefills.
    state_bytes_per_token: int = 0
    # Per MoE layer, (outputs, inputs, bytes of one float) of each projection of an expert: what
    # a requantized copy of it takes (the lossy `lowbit` miss mode)
    projections: tuple[tuple[tuple[int, int, int], ...], ...] = ()

    @property
    def expert_bytes(self) -> tuple[int, ...]:
        return tuple(b.expert_bytes for b in self.banks)

    @property
    def num_experts(self) -> tuple[int, ...]:
        return tuple(b.num_experts for b in self.banks)


def describe(model: nn.Module, model_path: str | Path) -> Geometry:
    """The model's expert geometry, without reading any weight: each shard's header once."""
    path = Path(model_path)
    table = read_tensor_table(path)
    banks = find_banks(model)
    maps = map_checkpoint(path, banks, table)
    expert_ids = {id(a) for _, bank in banks for a in bank_params("", bank).values()}
    dense = sum(a.nbytes for _, a in flat_parameters(model) if id(a) not in expert_ids)
    args = getattr(model, "args", None)
    vocab = getattr(args, "vocab_size", 0)
    return Geometry(
        path,
        checkpoint_fingerprint(path, table),
        tuple(maps),
        tuple(_top_k(model, path) for path, _ in banks),
        dense,
        vocab if isinstance(vocab, int) else 0,
        _state_bytes(args),
        tuple(_projections(bank) for _, bank in banks),
    )


def block_of(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding the bank at `path` (the MoE block) and the bank's attribute name,
    found through the module tree as `named_modules` walks it (a model split into pipeline
    stages may show other objects through its attributes)."""
    *steps, name = path.split(".")
    node = model
    for step in steps:
        if isinstance(node, list):
            node = node[int(step)]
        else:
            node = (
                node[step] if isinstance(node, nn.Module) and step in node else getattr(node, step)
            )
    return node, name


def _projections(bank: nn.Module) -> tuple[tuple[int, int, int], ...]:
    dims = []
    for child in bank.children().values():
        if isinstance(child, _LINEAR_TYPES):
            floats = child.scales if "scales" in child else child.weight
            dims.append((child.output_dims, child.input_dims, floats.dtype.size))
    return tuple(dims)


def _top_k(model: nn.Module, path: str) -> int | None:
    block, _ = block_of(model, path)
    for name in ("num_experts_per_tok", "top_k", "experts_per_token"):
        value = getattr(block, name, None)
        if isinstance(value, int):
            return value
    gate = getattr(block, "gate", None)
    value = getattr(gate, "top_k", None)
    if isinstance(value, int):
        return value
    args = getattr(model, "args", None)
    for name in ("num_experts_per_tok", "moe_topk", "top_k"):
        value = getattr(args, name, None)
        if isinstance(value, int):
            return value
    return None


def _state_bytes(args) -> int:
    heads, key, value = (getattr(args, n, None) for n in _LINEAR_STATE)
    if not (isinstance(heads, int) and isinstance(key, int) and isinstance(value, int)):
        return 0
    return heads * key * value * 4
