"""Tensor names and shards on disk: mlx-lm's stacked form or the original HF per-expert form,
in two shards, with the first MoE layer's experts across the boundary for the split layouts."""

from __future__ import annotations

import re

import mlx.core as mx

from moe_testing._families import Family

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def to_hf(weights: dict[str, mx.array], family: Family, config: dict) -> dict[str, mx.array]:
    """Undo mlx-lm's `sanitize`: the names and shapes of the original HF checkpoint."""
    assert family.hf_projections is not None
    out = {}
    for name, w in weights.items():
        m = re.fullmatch(r"(model\.layers\.\d+\.\w+)\.switch_mlp\.(\w+)\.weight", name)
        if m:
            block, projection = m.groups()
            hf_projection = family.hf_projections[projection]
            for e in range(w.shape[0]):
                out[f"{block}.experts.{e}.{hf_projection}.weight"] = w[e]
        else:
            out[name] = w
    if family.name == "qwen3_next":
        _qwen3_next_to_hf(out)
    if family.name == "deepseek_v3":
        _deepseek_v3_to_hf(out, config)
    return out


def _qwen3_next_to_hf(weights: dict[str, mx.array]) -> None:
    # Qwen3-Next's RMSNorms compute x * (1 + w) and its conv1d is [C, 1, K]; mlx-lm's
    # `sanitize` adds the 1 and moves the kernel axis.
    norms = (
        ".input_layernorm.weight",
        ".post_attention_layernorm.weight",
        "model.norm.weight",
        ".q_norm.weight",
        ".k_norm.weight",
    )
    for name, w in weights.items():
        if name.endswith(norms) and w.ndim == 1:
            weights[name] = w - 1.0
        elif "conv1d.weight" in name:
            weights[name] = w.moveaxis(2, 1)  # [C, K, 1] -> [C, 1, K]


def _deepseek_v3_to_hf(weights: dict[str, mx.array], config: dict) -> None:
    # DeepSeek stores MLA's key/value up-projection as one kv_b_proj; mlx-lm splits it into
    # per-head embed_q and unembed_out.
    for name in [n for n in weights if n.endswith(".self_attn.embed_q.weight")]:
        prefix = name.removesuffix(".embed_q.weight")
        wk = weights.pop(name)  # [H, kv_lora_rank, qk_nope_head_dim]
        wv = weights.pop(f"{prefix}.unembed_out.weight")  # [H, v_head_dim, kv_lora_rank]
        v = mx.concatenate([wk.swapaxes(-1, -2), wv], axis=1)  # [H, nope + v_head, kv_lora]
        weights[f"{prefix}.kv_b_proj.weight"] = v.reshape(-1, config["kv_lora_rank"])


def cut_layer(layout: str, moe_layers: list[int], num_layers: int) -> int:
    """The layer at the boundary between the two shards: the first MoE layer for the split
    layouts, which cut it in two, and otherwise the first layer of the second half."""
    if layout in ("split", "per_expert_split"):
        return moe_layers[0]
    return (num_layers + 1) // 2


def shard_of(name: str, *, layout: str, cut: int, num_experts: int) -> int:
    """0 or 1: the embedding and the layers before `cut` go to the first shard, the layers
    after it and the head to the second."""
    m = _LAYER.match(name)
    if m is None:
        return 0 if "embed_tokens" in name else 1
    layer = int(m.group(1))
    if layer != cut:
        return 0 if layer < cut else 1
    if layout == "split":
        return 1 if re.search(r"\.(switch_mlp|experts)\.down_proj\.", name) else 0
    if layout == "per_expert_split":
        expert = re.search(r"\.experts\.(\d+)\.", name)
        return 1 if expert is not None and int(expert.group(1)) >= num_experts // 2 else 0
    return 1
