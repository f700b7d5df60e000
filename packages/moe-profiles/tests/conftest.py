"""A tiny offloadable checkpoint, built once per session from mlx-lm's own qwen3_moe class."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import qwen3_moe
    from mlx_lm.utils import save_config, save_model

    cfg = dict(
        model_type="qwen3_moe",
        hidden_size=64,
        num_hidden_layers=3,
        intermediate_size=128,
        num_attention_heads=4,
        num_experts=16,
        num_experts_per_tok=4,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        moe_intermediate_size=64,
        rms_norm_eps=1e-6,
        vocab_size=256,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        max_position_embeddings=512,
        norm_topk_prob=True,
    )
    mx.random.seed(0)
    model = qwen3_moe.Model(qwen3_moe.ModelArgs.from_dict(cfg))
    nn.quantize(model, 64, 4)
    mx.eval(model.parameters())
    out = tmp_path_factory.mktemp("tiny_qwen3_moe")
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    save_model(out, model, donate_model=False)
    save_config(cfg, out / "config.json")
    return out
