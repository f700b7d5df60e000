"""The packed layout: one read per expert, identical output, refused when stale."""

import json
import shutil

import mlx.core as mx
import pytest
from _models import greedy, identical, offloaded, prompt, reference, vocab_size
from mlx_lm.utils import load_model

import moe_core
from moe_core import CheckpointError


@pytest.fixture
def model_dir(moe_checkpoint, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(moe_checkpoint("qwen3_moe", "split", "q4"), dst)
    return dst


def pack(path):
    model, _ = load_model(path, lazy=True)
    seen = []
    out = moe_core.pack(model, path, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    return out


def test_packed_output_is_identical_and_one_read_per_expert(model_dir):
    out = pack(model_dir)
    assert out == model_dir / moe_core.PACK_NAME
    assert not list(model_dir.glob(".*.tmp"))  # nothing half-written left behind
    ref = reference(model_dir)
    tokens = prompt(vocab_size(ref), 30)
    want, want_tokens = greedy(ref, tokens, 8)
    model, handle = offloaded(model_dir, capacity=4)  # packed="auto" finds it
    assert handle.stats()["packed"] and all(layer.map.contiguous for layer in handle.layers)
    got, got_tokens = greedy(model, tokens, 8)
    assert got_tokens == want_tokens and identical(got, want)
    _, plain = offloaded(model_dir, capacity=4, packed=None)
    assert not plain.stats()["packed"]


def test_stale_pack_is_refused(model_dir):
    out = pack(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5  # another checkpoint now: another fingerprint
    (model_dir / "config.json").write_text(json.dumps(config))
    model, _ = load_model(model_dir, lazy=True)
    with pytest.raises(CheckpointError, match="moe pack"):
        moe_core.offload(model, model_dir, capacity=4, packed=out)
    with pytest.warns(UserWarning, match="ignoring packed experts"):
        handle = moe_core.offload(model, model_dir, capacity=4)
    assert not handle.stats()["packed"]


def test_truncated_pack_is_refused(model_dir):
    out = pack(model_dir)
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size - 4096)
    model, _ = load_model(model_dir, lazy=True)
    with pytest.raises(CheckpointError, match="truncated"):
        moe_core.offload(model, model_dir, capacity=4, packed=out)


def test_lookahead_is_exact_and_prefetches(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 12)
    want, _ = greedy(ref, tokens, 12)
    model, handle = offloaded(path, capacity=12, lookahead=True)
    got, _ = greedy(model, tokens, 12)
    assert identical(got, want)
    stats = handle.stats()
    assert stats["lookahead"]
    assert sum(layer["lookahead_predicted"] for layer in stats["layers"]) > 0
    assert sum(layer["prefetched"] for layer in stats["layers"]) > 0
    assert mx.isfinite(got[-1]).all().item()
