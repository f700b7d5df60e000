"""How many bytes the KV cache of a session may grow to, from the model config and its cache
types, so the expert budget can keep that much free (`reserve=` of `moe_core.offload`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import ArraysCache, KVCache, QuantizedKVCache, RotatingKVCache

KV_GROUP_SIZES = (64, 32)  # what mx.quantize accepts that divides common head sizes


# Unless told otherwise, the KV cache may take up to this share of the memory budget.
KV_SHARE = 1 / 8


@dataclass(frozen=True, slots=True)
class KVPlan:
    """The KV cache's size at `max_context` tokens."""

    max_context: int
    kv_bits: int | None
    bytes_per_token: int  # all growing (attention) layers together
    fixed_bytes: int  # windowed attention at its window and linear-attention state
    attention_layers: int
    linear_layers: int
    group_size: int = 64  # of the quantized KV cache
    reason: str = ""  # why the context is `max_context` tokens long

    def __post_init__(self) -> None:
        if self.max_context < 1:
            raise ValueError(f"max_context must be at least 1, got {self.max_context}")
        if self.kv_bits not in (None, 4, 8):
            raise ValueError(f"kv_bits must be 4, 8 or None, got {self.kv_bits}")

    @property
    def reserve_bytes(self) -> int:
        return self.bytes_per_token * self.max_context + self.fixed_bytes


def plan_context(
    model: nn.Module,
    config: dict,
    *,
    max_context: int | None,
    kv_bits: int | None,
    memory: int,
) -> KVPlan:
    """The session's one context limit (prompt and generated tokens together) and its KV cache.

    It is the model's positions (`max_position_embeddings`), or fewer where the KV cache at that
    length would take more than `KV_SHARE` of `memory` (the budget); `max_context` lowers it.
    """
    positions = model_positions(config)
    if max_context is not None:
        if positions is not None and max_context > positions:
            raise ValueError(
                f"max_context {max_context} is more than the model's {positions} positions"
            )
        plan = plan_kv(model, config, max_context=max_context, kv_bits=kv_bits)
        return replace(plan, reason=f"max_context given (the model has {positions} positions)")
    one = plan_kv(model, config, max_context=1, kv_bits=kv_bits)
    share = int(memory * KV_SHARE)
    fits = max(1, (share - one.fixed_bytes) // max(one.bytes_per_token, 1))
    if positions is not None and positions <= fits:
        limit, reason = positions, f"the model's {positions} positions"
    else:
        limit = fits
        reason = (
            f"a KV cache of {fits} tokens fills {KV_SHARE:.3g} of the {memory / 1e9:.2f} GB budget"
            + (f" (the model has {positions} positions)" if positions else "")
        )
    return replace(plan_kv(model, config, max_context=limit, kv_bits=kv_bits), reason=reason)


def model_positions(config: dict) -> int | None:
    """The longest sequence the model was made for, from its config."""
    config = {**config, **config.get("text_config", {})}
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def plan_kv(model: nn.Module, config: dict, *, max_context: int, kv_bits: int | None) -> KVPlan:
    """Size the cache mlx-lm will build for `model` (`make_cache` tells which layer keeps what)."""
    config = {**config, **config.get("text_config", {})}
    caches = model.make_cache() if hasattr(model, "make_cache") else None
    if caches is None:
        # As mlx-lm's make_prompt_cache: one per layer this model runs (its stage, when split).
        caches = [KVCache() for _ in range(len(model.layers))]
    group = _group_size(config) if kv_bits is not None else KV_GROUP_SIZES[0]
    token = _attention_bytes_per_token(config, _dtype_bytes(model), kv_bits, group)
    per_token = fixed = attention = linear = 0
    for cache in caches:
        if isinstance(cache, RotatingKVCache):
            attention += 1
            fixed += token * min(cache.max_size, max_context)
        elif isinstance(cache, (KVCache, QuantizedKVCache)):
            attention += 1
            per_token += token
        elif isinstance(cache, ArraysCache):
            linear += 1
            fixed += _linear_state_bytes(config)
        else:  # an unknown cache type: size it as a full attention layer, never as free
            attention += 1
            per_token += token
    return KVPlan(max_context, kv_bits, per_token, fixed, attention, linear, group)


def _attention_bytes_per_token(
    config: dict, dtype_bytes: int, kv_bits: int | None, group: int
) -> int:
    """Keys plus values of one token in one layer."""
    if config.get("kv_lora_rank"):  # multi-head latent attention caches the latent and rope key
        elements = config["kv_lora_rank"] + config.get("qk_rope_head_dim", 0)
    else:
        kv_heads = config.get("num_key_value_heads") or config.get("num_attention_heads", 1)
        elements = 2 * kv_heads * _head_dim(config)
    if kv_bits is None:
        return elements * dtype_bytes
    # Quantized: packed values plus a scale and a bias per group, in the activation dtype.
    return elements * kv_bits // 8 + 2 * dtype_bytes * -(-elements // group)


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config.get("num_attention_heads", 1)


def _group_size(config: dict) -> int:
    """The largest quantization group that divides the cached vectors (mlx-lm quantizes the
    last axis, the head dimension)."""
    dims = [_head_dim(config)]
    if config.get("kv_lora_rank"):
        dims = [config["kv_lora_rank"], config.get("qk_rope_head_dim", 64)]
    for group in KV_GROUP_SIZES:
        if all(d % group == 0 for d in dims):
            return group
    raise ValueError(f"kv_bits needs a head dimension divisible by 32; this model's is {dims[0]}")


def _linear_state_bytes(config: dict) -> int:
    """Gated-delta-net state (Qwen3-Next): conv state and the float32 recurrent state."""
    key_heads = config.get("linear_num_key_heads", 0)
    value_heads = config.get("linear_num_value_heads", 0)
    key_dim = config.get("linear_key_head_dim", 0)
    value_dim = config.get("linear_value_head_dim", 0)
    kernel = config.get("linear_conv_kernel_dim", 4)
    conv_dim = 2 * key_heads * key_dim + value_heads * value_dim
    return 4 * ((kernel - 1) * conv_dim + value_heads * value_dim * key_dim)


def _dtype_bytes(model: nn.Module) -> int:
    """Bytes of the activation dtype: that of the embedding (its scales when quantized)."""
    for name, array in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters())):
        if "embed" in name and mx.issubdtype(array.dtype, mx.floating):
            return array.dtype.size
    return 2
