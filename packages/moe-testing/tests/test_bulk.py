"""Bulk checkpoints: mlx-lm loads and runs them, expert bytes are random and never computed, the
routing skew is what was asked, and a second build of the same spec is a no-op."""

from __future__ import annotations

import json
import time

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from moe_testing import QWEN3_CODER_NEXT, BulkSpec, build_bulk_checkpoint, routing_counts

TINY = dict(
    QWEN3_CODER_NEXT, num_hidden_layers=2, hidden_size=128, intermediate_size=256,
    num_attention_heads=2, num_key_value_heads=1, head_dim=64, linear_num_value_heads=2,
    linear_num_key_heads=1, linear_key_head_dim=64, linear_value_head_dim=64, num_experts=32,
    num_experts_per_tok=4, moe_intermediate_size=64, shared_expert_intermediate_size=64,
    full_attention_interval=2, vocab_size=256,
)  # fmt: skip


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    spec = BulkSpec(TINY, dtype="float32", skew=0.6)
    return spec, build_bulk_checkpoint(spec, tmp_path_factory.mktemp("bulk") / "ckpt")


def test_mlx_lm_loads_and_runs_it(skewed):
    _, path = skewed
    model, tokenizer = load(str(path))
    logits = model(mx.array([[3, 4, 5, 6]]))
    assert logits.shape == (1, 4, 256) and mx.isfinite(logits).all().item()
    assert tokenizer.decode([5, 6]) == "w5 w6"


def test_expert_bytes_are_random_and_the_rest_is_the_models(skewed):
    _, path = skewed
    weights = {}
    for shard in sorted(path.glob("*.safetensors")):
        weights.update(mx.load(str(shard)))
    experts = np.array(weights["model.layers.0.mlp.switch_mlp.gate_proj.weight"])
    assert experts.dtype == np.uint32 and len({experts[e].tobytes() for e in range(32)}) == 32
    scales = np.array(weights["model.layers.0.mlp.switch_mlp.gate_proj.scales"])
    biases = np.array(weights["model.layers.0.mlp.switch_mlp.gate_proj.biases"])
    assert (scales == 2**-10).all() and (biases == -7.5 * 2**-10).all()
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.gate"]["bits"] == 8  # mlx-lm's own choice
    info = json.loads((path / "bulk.json").read_text())
    assert info["expert_bytes"] == sum(a.nbytes for k, a in weights.items() if ".switch_mlp." in k)


def test_the_skew_is_what_was_asked(skewed, tmp_path):
    _, path = skewed
    model, _ = load(str(path))
    counts = routing_counts(model)[0]
    share = np.sort(counts)[::-1][: 32 // 5].sum() / counts.sum()
    assert 0.45 < share < 0.75, share
    flat = build_bulk_checkpoint(BulkSpec(TINY, dtype="float32"), tmp_path / "flat")
    counts = routing_counts(load(str(flat))[0])[0]
    assert np.sort(counts)[::-1][: 32 // 5].sum() / counts.sum() < share


def test_a_second_build_of_the_same_spec_is_kept(skewed):
    spec, path = skewed
    before = path.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_bulk_checkpoint(spec, path) == path
    assert time.perf_counter() - start < 1 and path.stat().st_mtime_ns == before
    assert BulkSpec(dict(TINY), dtype="float32", skew=0.6).name == spec.name
    assert BulkSpec(TINY, dtype="float32", skew=0.5).name != spec.name


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="model_type"):
        BulkSpec(dict(TINY, model_type="llama"))
    with pytest.raises(ValueError, match="skew"):
        BulkSpec(TINY, skew=1.5)
