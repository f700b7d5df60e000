"""The model families a fixture can be: their HF `config.json` at a small geometry, and where
each keeps its experts and router.

Each config follows the family's published checkpoint (Qwen3-30B-A3B, Qwen3-Next-80B-A3B,
Qwen1.5-MoE-A2.7B, Mixtral-8x7B, DeepSeek-V3, gpt-oss-20b, OLMoE-1B-7B) with the sizes shrunk;
mlx-lm's `ModelArgs.from_dict` reads the keys it knows and ignores the rest, as it does there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from moe_testing._tokenizer import EOS_TOKEN, PAD_TOKEN, VOCAB_SIZE, token_id


@dataclass(slots=True, frozen=True)
class Geometry:
    num_layers: int
    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    top_k: int


@dataclass(slots=True, frozen=True)
class Family:
    name: str
    defaults: Geometry
    config: Callable[[Geometry], dict]
    # Where the decoder layer keeps its MoE block, and where the block keeps its experts
    # (a SwitchGLU) and router: `layers[i].{moe_block}.{experts}`.
    moe_block: str = "mlp"
    experts: str = "switch_mlp"
    router: str = "gate"
    # Per-expert tensor names of the original HF checkpoint, for the projections mlx-lm
    # stacks into `gate_proj`, `up_proj`, `down_proj`; None where `sanitize` cannot stack them.
    hf_projections: dict[str, str] | None = None
    min_layers: int = 1
    # DeepSeek's grouped routing: (n_group, topk_group), which bound the expert count and
    # top-k. Its router (MoEGate) returns the chosen experts itself.
    expert_groups: tuple[int, int] | None = None

    def route(self, block: nn.Module, x: mx.array, k: int) -> mx.array:
        """The experts `block`'s router picks for its inputs `x` [N, D]: [N, k] indices."""
        if self.expert_groups is not None:
            inds, _ = block[self.router](x)  # sigmoid, correction bias, groups, top-k
            return inds
        # Softmax keeps the order of the logits, so their top-k is the routing.
        logits = block[self.router](x)  # [N, E]
        return mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k]

    def router_weight(self, layer: int) -> str:
        return f"model.layers.{layer}.{self.moe_block}.{self.router}.weight"

    def moe_layers(self, model: nn.Module) -> list[int]:
        """Indices of the decoder layers that hold routed experts."""
        return [
            i
            for i, layer in enumerate(model.layers)
            if hasattr(getattr(layer, self.moe_block), self.experts)
        ]

    def moe_block_of(self, model: nn.Module, layer: int) -> nn.Module:
        return getattr(model.layers[layer], self.moe_block)


_QWEN_PROJECTIONS = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


def _common() -> dict:
    return {
        "vocab_size": VOCAB_SIZE,
        "bos_token_id": token_id(PAD_TOKEN),
        "eos_token_id": token_id(EOS_TOKEN),
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        "tie_word_embeddings": False,
        "transformers_version": "4.57.1",
    }


def _qwen3_moe(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "decoder_sparse_step": 1,
        "head_dim": 16,
        "hidden_size": g.hidden_size,
        "intermediate_size": 2 * g.moe_intermediate_size,
        "max_position_embeddings": 4096,
        "max_window_layers": g.num_layers,
        "mlp_only_layers": [],
        "moe_intermediate_size": g.moe_intermediate_size,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": g.num_experts,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "sliding_window": None,
        "use_sliding_window": False,
    }


def _qwen3_next(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["Qwen3NextForCausalLM"],
        "model_type": "qwen3_next",
        "attention_bias": False,
        "decoder_sparse_step": 1,
        # Every second layer is full attention, so both layer kinds appear in two layers.
        "full_attention_interval": 2,
        "head_dim": 16,
        "hidden_size": g.hidden_size,
        "intermediate_size": 2 * g.moe_intermediate_size,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_value_head_dim": 16,
        "max_position_embeddings": 4096,
        "mlp_only_layers": [],
        "moe_intermediate_size": g.moe_intermediate_size,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": g.num_experts,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": g.moe_intermediate_size,
        "use_sliding_window": False,
    }


def _qwen2_moe(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "decoder_sparse_step": 1,
        "hidden_size": g.hidden_size,
        "intermediate_size": 2 * g.moe_intermediate_size,
        "max_position_embeddings": 4096,
        "max_window_layers": g.num_layers,
        "moe_intermediate_size": g.moe_intermediate_size,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": g.num_experts,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 4,
        "output_router_logits": False,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 2 * g.moe_intermediate_size,
        "sliding_window": 4096,
        "use_sliding_window": False,
    }


def _mixtral(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": g.hidden_size,
        "intermediate_size": g.moe_intermediate_size,
        "max_position_embeddings": 4096,
        "num_attention_heads": 4,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 2,
        "num_local_experts": g.num_experts,
        "output_router_logits": False,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": None,
    }


_DEEPSEEK_GROUPS = (4, 2)


def _deepseek_v3(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "attention_bias": False,
        "ep_size": 1,
        # Layer 0 is a dense MLP, the rest are MoE, as in DeepSeek-V3's first three layers.
        "first_k_dense_replace": 1,
        "hidden_size": g.hidden_size,
        "intermediate_size": 2 * g.moe_intermediate_size,
        "kv_lora_rank": 64,
        "max_position_embeddings": 4096,
        "moe_intermediate_size": g.moe_intermediate_size,
        "moe_layer_freq": 1,
        "n_group": _DEEPSEEK_GROUPS[0],
        "n_routed_experts": g.num_experts,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 0,
        "q_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "topk_group": _DEEPSEEK_GROUPS[1],
        "topk_method": "noaux_tc",
        "v_head_dim": 32,
    }


def _gpt_oss(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "experts_per_token": g.top_k,
        "head_dim": 16,
        "hidden_size": g.hidden_size,
        "initial_context_length": 4096,
        "intermediate_size": g.moe_intermediate_size,
        "layer_types": [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(g.num_layers)
        ],
        "max_position_embeddings": 131072,
        "num_attention_heads": 4,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 2,
        "num_local_experts": g.num_experts,
        "output_router_logits": False,
        "pad_token_id": token_id(PAD_TOKEN),
        "rms_norm_eps": 1e-5,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": 8,
        "swiglu_limit": 7.0,
    }


def _olmoe(g: Geometry) -> dict:
    return _common() | {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "attention_bias": False,
        "clip_qkv": None,
        "hidden_size": g.hidden_size,
        "intermediate_size": g.moe_intermediate_size,
        "max_position_embeddings": 4096,
        "norm_topk_prob": False,
        "num_attention_heads": 4,
        "num_experts": g.num_experts,
        "num_experts_per_tok": g.top_k,
        "num_hidden_layers": g.num_layers,
        "num_key_value_heads": 4,
        "output_router_logits": False,
        "pad_token_id": token_id(PAD_TOKEN),
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
    }


def _small(num_layers: int, num_experts: int, top_k: int) -> Geometry:
    return Geometry(
        num_layers, hidden_size=64, moe_intermediate_size=64, num_experts=num_experts, top_k=top_k
    )


FAMILY = {
    f.name: f
    for f in (
        Family(
            "qwen3_moe",
            _small(2, 16, 4),
            _qwen3_moe,
            hf_projections=_QWEN_PROJECTIONS,
        ),
        Family(
            "qwen3_next",
            _small(4, 16, 4),
            _qwen3_next,
            hf_projections=_QWEN_PROJECTIONS,
            min_layers=2,
        ),
        Family(
            "qwen2_moe",
            _small(2, 8, 2),
            _qwen2_moe,
            hf_projections=_QWEN_PROJECTIONS,
        ),
        Family(
            "mixtral",
            _small(2, 8, 2),
            _mixtral,
            moe_block="block_sparse_moe",
            hf_projections={"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
        ),
        Family(
            "deepseek_v3",
            _small(3, 16, 4),
            _deepseek_v3,
            hf_projections=_QWEN_PROJECTIONS,
            min_layers=2,
            expert_groups=_DEEPSEEK_GROUPS,
        ),
        Family(
            # The original checkpoint fuses gate and up of all experts into one MXFP4 tensor,
            # so there is no per-expert form to write.
            "gpt_oss",
            _small(2, 8, 2),
            _gpt_oss,
            experts="experts",
            router="router",
            min_layers=2,
        ),
        Family(
            "olmoe",
            _small(2, 16, 4),
            _olmoe,
            hf_projections=_QWEN_PROJECTIONS,
        ),
    )
}
