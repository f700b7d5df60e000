"""Bad checkpoints and models give clear errors that name the file and tensor."""

import json
import shutil
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from _models import greedy, identical, offloaded, prompt, reference, vocab_size
from mlx_lm.models import llama
from mlx_lm.utils import _get_classes, load_model, save_config, save_model

import moe_core
from moe_core import BudgetError, CheckpointError, MoEError, UnsupportedModelError


@pytest.fixture
def copy(moe_checkpoint, tmp_path):
    def make(*args):
        dst = tmp_path / "model"
        shutil.copytree(moe_checkpoint(*args), dst)
        return dst

    return make


def expert_shard(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return next(f for k, f in index["weight_map"].items() if "switch_mlp" in k or "experts" in k)


def test_dense_model_is_refused(tmp_path):
    config = dict(
        model_type="llama", hidden_size=64, num_hidden_layers=1, intermediate_size=128,
        num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=100,
        rope_theta=10000.0, tie_word_embeddings=True,
    )  # fmt: skip
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    save_model(tmp_path, model, donate_model=False)
    save_config(config, tmp_path / "config.json")
    lazy, _ = load_model(tmp_path, lazy=True)
    with pytest.raises(UnsupportedModelError, match="no expert banks"):
        moe_core.offload(lazy, tmp_path, capacity=2)


def test_truncated_shard_names_file_and_tensor(copy):
    path = copy("qwen3_moe", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    shard = path / expert_shard(path)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    with pytest.raises(CheckpointError) as err:
        moe_core.offload(model, path, capacity=2)
    assert shard.name in str(err.value) and "truncated" in str(err.value)
    assert "tensor " in str(err.value)


def test_missing_shard_names_file(copy):
    path = copy("qwen3_moe", "split", "q4")
    model, _ = load_model(path, lazy=True)
    shard = path / expert_shard(path)
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{shard.name}.*missing"):
        moe_core.offload(model, path, capacity=2)


def test_shape_mismatch_is_refused(copy):
    path = copy("qwen3_moe", "stacked", "q4")
    config = json.loads((path / "config.json").read_text())
    config["moe_intermediate_size"] *= 2
    # The model the config now describes, quantized as the checkpoint says, its weights not loaded.
    model_class, args_class = _get_classes(config)
    bigger = model_class(args_class.from_dict(config))
    nn.quantize(
        bigger, group_size=config["quantization"]["group_size"], bits=config["quantization"]["bits"]
    )
    with pytest.raises(CheckpointError, match="the model expects"):
        moe_core.offload(bigger, path, capacity=2)


def test_bad_arguments(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    with pytest.raises(ValueError, match="not both"):
        moe_core.offload(model, path, capacity=2, memory=10**9)
    with pytest.raises(ValueError, match="miss mode"):
        moe_core.offload(model, path, capacity=2, miss="guess")
    with pytest.raises(BudgetError, match="at least"):
        moe_core.offload(model, path, memory=10**6)


def test_pinned_experts_are_never_evicted(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=6)
    handle.pin({0: [1, 2]})
    seen = []

    def on_step(layer, ids):
        if layer == 0:
            seen.append(handle.resident()[0])

    handle.observe(SimpleNamespace(on_step=on_step))
    for seed in range(4):
        model(mx.array([[seed * 7 + i for i in range(3, 40)]]))
    assert len(seen) > 1 and all({1, 2} <= resident for resident in seen)
    assert {1, 2} <= handle.resident()[0]
    assert handle.pinned()[0] == {1, 2}


def test_skip_drops_a_miss_and_reads_it_only_into_a_slot_its_step_does_not_use(moe_checkpoint):
    """Skip computes without a missing expert (lossy: the output differs from exact) and reads it
    for later forwards, but never into a slot that holds an expert the step uses: here every
    slot holds one, so the misses are dropped and nothing is read."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    tokens = mx.array([list(range(3, 43))])
    exact, _ = offloaded(path, capacity=4)
    skip, handle = offloaded(path, capacity=4, miss="skip")
    handle.prefetch({layer: [0, 1, 2, 3] for layer in range(len(handle.capacity))})
    handle.reset_stats()
    out = skip(tokens)
    stats = handle.stats()
    assert stats["bytes_read"] == 0 and stats["misses"] > 0
    assert all(resident == {0, 1, 2, 3} for resident in handle.resident())
    assert sum(layer["skipped"] for layer in stats["layers"]) == stats["misses"]
    assert not mx.array_equal(out, exact(tokens)).item()
    assert bool(mx.isfinite(out).all())


def test_skip_with_every_expert_resident_is_exact(moe_checkpoint):
    path = moe_checkpoint("mixtral", "stacked", "q4")
    tokens = mx.array([list(range(3, 43))])
    full, _ = offloaded(path, capacity=10**6)
    skip, sh = offloaded(path, capacity=10**6, miss="skip")
    sh.prefetch({i: range(e) for i, e in enumerate(sh.num_experts)})
    assert mx.array_equal(skip(tokens), full(tokens)).item()
    assert sh.stats()["misses"] == 0


def test_quantized_linear_without_expert_axis_is_refused():
    from mlx_lm.models.switch_layers import SwitchGLU

    from moe_core._checkpoint import bank_params

    bank = SwitchGLU(64, 32, 4)
    bank.gate_proj.weight = mx.zeros((64, 32))
    with pytest.raises(UnsupportedModelError, match="no leading expert axis"):
        bank_params("layers.0.mlp.switch_mlp", bank)


@pytest.mark.parametrize(
    "options",
    [
        {"lookahead": False},
        {"lookahead": True},
        {"backend": moe_core.CPUBackend(unified_memory=False)},  # CUDA's staged uploads
    ],
    ids=["read", "lookahead", "staged"],
)
def test_a_failed_read_leaves_nothing_half_admitted(copy, options):
    """A read that fails (the shard was cut short while serving) frees the slots it was filling:
    once the file is whole again, the next forward pass is exact."""
    path = copy("qwen3_moe", "stacked", "q4")
    shard = path / expert_shard(path)
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 24)
    want, want_tokens = greedy(ref, tokens, 6)
    model, handle = offloaded(path, capacity=4, **options)
    original = shard.read_bytes()
    with open(shard, "r+b") as f:
        f.truncate(len(original) // 2)
    with pytest.raises(CheckpointError, match="truncated"):
        greedy(model, tokens, 6)
    with open(shard, "r+b") as f:
        f.write(original)
    got, got_tokens = greedy(model, tokens, 6)
    assert got_tokens == want_tokens and identical(got, want)
    handle.close()


def test_embedding_mistakes_get_clear_errors(moe_checkpoint):
    """A size given as text is parsed; offloading a model twice, and running one whose handle
    is closed, are `MoEError`s that say what happened."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    handle = moe_core.offload(model, path, memory="16GB")
    assert handle.stats()["budget"]["memory"] == 16 * 10**9
    with pytest.raises(MoEError, match="already offloaded"):
        moe_core.offload(model, path, capacity=2)
    mx.eval(model.parameters())
    tokens = prompt(vocab_size(model), 8)
    mx.eval(model(tokens))
    handle.close()
    with pytest.raises(MoEError, match="closed"):
        model(tokens)


def test_skip_fills_its_cache_from_a_cold_start(moe_checkpoint):
    """Skip computes only resident experts but reads the missing ones in the background, so a
    cold cache fills instead of skipping every expert forever; stats say what was skipped."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=4, miss="skip")
    tokens = prompt(vocab_size(model), 8)
    mx.eval(model(tokens))
    first = handle.stats()
    assert first["hits"] == 0 and first["skipped"] == first["misses"] > 0
    assert first["bytes_read"] > 0 and all(len(r) > 0 for r in handle.resident())
    handle.reset_stats()
    mx.eval(model(tokens))
    again = handle.stats()
    assert again["hits"] > 0 and again["skipped"] == again["misses"]
    assert again["miss"] == "skip" and again["lossy"]
    handle.close()


def test_a_failed_read_started_ahead_does_not_fail_a_later_step(copy):
    """Reads started ahead of need (here: every expert, as a layer whose slots hold all of them
    does in the background) that fail while the shard is cut short are undone; once the file
    is whole again, the next pass is exact instead of failing on the stale read."""
    path = copy("qwen3_moe", "stacked", "q4")
    shard = path / expert_shard(path)
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 12)
    want, want_tokens = greedy(ref, tokens, 4)
    model, handle = offloaded(path, capacity=10**6)
    original = shard.read_bytes()
    with open(shard, "r+b") as f:
        f.truncate(len(original) // 2)
    for layer in handle.layers:
        layer.reads.prefetch(np.arange(layer.map.num_experts))
        layer.reads.pending.exception()  # landed, and failed for some experts
    with open(shard, "r+b") as f:
        f.write(original)
    got, got_tokens = greedy(model, tokens, 4)
    assert got_tokens == want_tokens and identical(got, want)
    handle.close()
