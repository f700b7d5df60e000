"""A qwen3_moe decoder in plain PyTorch, for training the demo model.

It computes what mlx-lm's `models/qwen3_moe.py` computes (softmax router, top-k renormalised when
`norm_topk_prob`, SwiGLU experts, per-head RMSNorm on queries and keys before rotate-half RoPE, a
head size of its own), and `hf_state_dict` writes its weights under the Hugging Face
`Qwen3MoeForCausalLM` names with one tensor per expert, which `mlx_lm.convert` stacks into
`switch_mlp`. The experts run as two grouped matrix products over tokens sorted by expert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(slots=True, frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    router_aux_loss_coef: float
    norm_topk_prob: bool = True
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ValueError("num_experts_per_tok must be in [1, num_experts]")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (rotate-half RoPE)")

    def hf_config(self, *, eos_token_ids: list[int], pad_token_id: int) -> dict:
        """config.json for `Qwen3MoeForCausalLM` and mlx-lm's `qwen3_moe`."""
        fields = asdict(self)
        fields.pop("router_aux_loss_coef")
        return {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            **fields,
            # Unused: every layer is sparse. mlx-lm's ModelArgs requires the field.
            "intermediate_size": 4 * self.hidden_size,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "output_router_logits": False,
            "use_cache": True,
            "bos_token_id": None,
            "eos_token_id": eos_token_ids,
            "pad_token_id": pad_token_id,
            "torch_dtype": "bfloat16",
        }


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = hd = config.head_dim
        dim = config.hidden_size
        self.q_proj = nn.Linear(dim, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, dim, bias=False)
        self.q_norm = nn.RMSNorm(hd, eps=config.rms_norm_eps)
        self.k_norm = nn.RMSNorm(hd, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin  # [B, H, L, D]
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows of `x` (sorted by expert, group ends in `offsets`) times their expert's `weight.T`."""
    # grouped_mm is not autocast-aware: both sides must share a dtype.
    return F.grouped_mm(x, weight.to(x.dtype).transpose(-2, -1), offs=offsets)


class SparseMoeBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        E, D = config.num_experts, config.hidden_size
        inter = config.moe_intermediate_size
        self.num_experts = E
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.intermediate = inter
        self.gate = nn.Linear(D, E, bias=False)
        # Rows [0, inter) of gate_up are the experts' gate_proj, the rest their up_proj.
        self.gate_up = nn.Parameter(torch.empty(E, 2 * inter, D))
        self.down = nn.Parameter(torch.empty(E, D, inter))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, D = x.shape
        flat = x.reshape(-1, D)  # [N, D]
        router_logits = self.gate(flat).float()  # [N, E]
        probs = router_logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # [N, k]
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        expert_ids = experts.reshape(-1)  # [N*k]
        sorted_ids, order = expert_ids.sort()
        rows = flat[order // self.top_k]  # [N*k, D], grouped by expert
        counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, sorted_ids, torch.ones_like(sorted_ids, dtype=torch.int32))
        offsets = counts.cumsum(0, dtype=torch.int32)  # [E], end of each expert's rows
        device = rows.device.type
        if torch.is_autocast_enabled(device):
            rows = rows.to(torch.get_autocast_dtype(device))

        h = grouped_linear(rows, self.gate_up, offsets)  # [N*k, 2I]
        h = F.silu(h[:, : self.intermediate]) * h[:, self.intermediate :]
        out = grouped_linear(h, self.down, offsets)  # [N*k, D]
        out = out * weights.reshape(-1)[order, None].to(out.dtype)

        routed = torch.zeros_like(out).index_copy_(0, order, out)  # back to token order
        routed = routed.view(-1, self.top_k, D).sum(dim=1)
        return routed.to(x.dtype).view(B, L, D), router_logits


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SparseMoeBlock(config)

    def forward(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        r, router_logits = self.mlp(self.post_attention_layernorm(h))
        return h + r, router_logits


class Qwen3Moe(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        inv_freq = 1.0 / config.rope_theta ** (
            torch.arange(0, config.head_dim, 2, dtype=torch.float32) / config.head_dim
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.initializer_range
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=std)
        # Residual outputs scaled down by depth, as in GPT-2.
        for layer in self.layers:
            scale = 1 / math.sqrt(2 * self.config.num_hidden_layers)
            layer.self_attn.o_proj.weight.data.mul_(scale)
            layer.mlp.down.data.mul_(scale)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, L, V] and each layer's router logits [B*L, E]."""
        h, router_logits = self.hidden(tokens)
        return self.lm_head(h), router_logits

    def hidden(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final normed hidden states [B, L, D] and each layer's router logits."""
        L = tokens.shape[1]
        positions = torch.arange(L, device=tokens.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, head_dim]
        cos, sin = emb.cos(), emb.sin()
        h = self.embed_tokens(tokens)
        router_logits = []
        for layer in self.layers:
            h, logits = layer(h, cos, sin)
            router_logits.append(logits)
        return self.norm(h), router_logits


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """transformers' Qwen3-MoE auxiliary loss, taken per layer and averaged over layers.

    transformers pools all layers' router logits before taking it, which balances expert index e
    across layers rather than within each layer; per layer keeps every layer's experts in use.
    Perfect balance gives `top_k`.
    """
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)  # [N, E]
        E = probs.shape[-1]
        _, selected = probs.topk(top_k, dim=-1)
        tokens_per_expert = F.one_hot(selected, E).float().mean(dim=0)  # [k, E]
        losses.append(E * (tokens_per_expert * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def hf_state_dict(model: Qwen3Moe) -> dict[str, torch.Tensor]:
    """The weights under `Qwen3MoeForCausalLM` names, one tensor per expert, in bfloat16."""
    config = model.config
    inter = config.moe_intermediate_size
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", torch.bfloat16)
        if name.startswith("lm_head."):
            out[name] = tensor
            continue
        if name.endswith("mlp.gate_up"):
            prefix = name.removesuffix("gate_up")
            for e in range(config.num_experts):
                out[f"model.{prefix}experts.{e}.gate_proj.weight"] = tensor[e, :inter].clone()
                out[f"model.{prefix}experts.{e}.up_proj.weight"] = tensor[e, inter:].clone()
        elif name.endswith("mlp.down"):
            prefix = name.removesuffix("down")
            for e in range(config.num_experts):
                out[f"model.{prefix}experts.{e}.down_proj.weight"] = tensor[e].clone()
        else:
            out[f"model.{name}"] = tensor
    return out
