"""The training model against a per-token reference and against mlx-lm's qwen3_moe.

    pytest training/test_model.py

needs torch; the mlx-lm comparison also needs mlx and mlx-lm, and is skipped without them.
Runs on the CPU in seconds, and on a CUDA GPU when there is one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).parent))

from model import ModelConfig, Qwen3Moe, SparseMoeBlock, hf_state_dict  # noqa: E402

TINY = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    num_experts=8,
    num_experts_per_tok=3,
    moe_intermediate_size=32,
    max_position_embeddings=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    router_aux_loss_coef=0.005,
)


def reference_moe(block: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """The sparse block token by token, the way mlx-lm's Qwen3MoeSparseMoeBlock reads."""
    inter = block.intermediate
    out = torch.zeros_like(x)
    for t, row in enumerate(x):
        probs = block.gate(row).float().softmax(-1)
        weights, experts = probs.topk(block.top_k)
        weights = weights / weights.sum()
        for w, e in zip(weights, experts, strict=True):
            gate_up = block.gate_up[e] @ row
            h = torch.nn.functional.silu(gate_up[:inter]) * gate_up[inter:]
            out[t] += w * (block.down[e] @ h)
    return out


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_sparse_block_matches_reference(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.manual_seed(0)
    model = Qwen3Moe(TINY).to(device)
    block = model.layers[0].mlp
    x = torch.randn(1, 40, TINY.hidden_size, device=device)
    got, _ = block(x)
    want = reference_moe(block, x[0])
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-4)


def test_grads_reach_every_picked_expert():
    torch.manual_seed(0)
    model = Qwen3Moe(TINY)
    logits, _ = model(torch.randint(0, TINY.vocab_size, (2, 32)))
    logits.sum().backward()
    grad = model.layers[0].mlp.gate_up.grad
    assert grad is not None and (grad.abs().sum(dim=(1, 2)) > 0).sum() >= TINY.num_experts_per_tok


def test_logits_match_mlx_lm(tmp_path):
    mx = pytest.importorskip("mlx.core")
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Qwen3Moe(TINY)
    with torch.no_grad():
        for layer in model.layers:  # non-trivial norms, so their names and layout are checked
            layer.self_attn.q_norm.weight.normal_(1.0, 0.2)
            layer.self_attn.k_norm.weight.normal_(1.0, 0.2)
        for p in model.parameters():  # the checkpoint is bfloat16: compare on the same weights
            p.copy_(p.to(torch.bfloat16).float())
    config = TINY.hf_config(eos_token_ids=[2, 0], pad_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(hf_state_dict(model), str(tmp_path / "model.safetensors"))

    mlx_model, _ = mlx_lm_utils.load_model(tmp_path)
    mlx_model.set_dtype(mx.float32)
    tokens = torch.randint(0, TINY.vocab_size, (1, 60))
    want = mlx_model(mx.array(tokens.numpy()))
    with torch.no_grad():
        got, _ = model(tokens)
    torch.testing.assert_close(got, torch.from_numpy(np.array(want)), rtol=1e-3, atol=1e-3)
