"""`head_dim` and `config_overrides`: the checkpoints other packages' tests need, without a
builder of their own."""

from __future__ import annotations

import json

import pytest

from moe_testing import CheckpointSpec, build_checkpoint, reference_model


def test_head_dim_and_config_reach_the_model(tmp_path):
    spec = CheckpointSpec(
        "qwen3_moe", num_layers=1, num_experts=4, top_k=2, head_dim=32,
        config_overrides={"max_position_embeddings": 2048},
    )  # fmt: skip
    path = build_checkpoint(spec, tmp_path)
    config = json.loads((path / "config.json").read_text())
    assert config["head_dim"] == 32 and config["max_position_embeddings"] == 2048
    model, _ = reference_model(path)
    assert model.args.head_dim == 32
    assert model.layers[0].self_attn.q_proj.weight.shape[0] == 32 * config["num_attention_heads"]


def test_specs_stay_hashable_and_named_apart():
    a = CheckpointSpec("qwen3_moe", config_overrides={"max_position_embeddings": 2048})
    b = CheckpointSpec("qwen3_moe", config_overrides={"max_position_embeddings": 1024})
    c = CheckpointSpec("qwen3_moe", head_dim=32)
    assert a == CheckpointSpec("qwen3_moe", config_overrides={"max_position_embeddings": 2048})
    assert len({a, b, c, CheckpointSpec("qwen3_moe")}) == 4
    assert len({a.name, b.name, c.name, CheckpointSpec("qwen3_moe").name}) == 4


@pytest.mark.parametrize("head_dim", [0, 7, True, "16"])
def test_bad_head_dims_are_refused(head_dim):
    with pytest.raises(ValueError, match="head_dim"):
        CheckpointSpec("qwen3_moe", head_dim=head_dim)


def test_a_family_without_head_dim_refuses_one():
    with pytest.raises(ValueError, match="mixtral has no head_dim"):
        CheckpointSpec("mixtral", head_dim=32)
