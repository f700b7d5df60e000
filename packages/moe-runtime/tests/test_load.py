"""`Session` on a model directory with a broken file raises `ModelLoadError` naming the file; the
checks pass every family's good checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest

from moe_runtime import ModelLoadError, Session, load_checked


@pytest.fixture
def copy(checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint(), model)
    return model


def test_truncated_shard(copy):
    shard = next(copy.glob("*.safetensors"))
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 1000)
    with pytest.raises(ModelLoadError, match=f"{shard}.*truncated"):
        Session(copy, capacity=2, warm_start=False)


def test_config_cut_short(copy):
    config = copy / "config.json"
    config.write_text(config.read_text()[:-40])
    with pytest.raises(ModelLoadError, match=f"{config}: not valid JSON"):
        Session(copy, capacity=2, warm_start=False)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_experts", "16", "an integer"),
        ("num_experts_per_tok", 2.5, "an integer"),
        ("rms_norm_eps", [1e-6], "a number"),
        ("model_type", 3, None),
    ],
)
def test_config_wrong_type(copy, field, value, expected):
    config = copy / "config.json"
    doc = json.loads(config.read_text())
    doc[field] = value
    config.write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match=str(config)) as e:
        load_checked(copy)
    if expected:
        assert f"{field} is {json.dumps(value)}, expected {expected}" in str(e.value)


def test_missing_tokenizer(copy):
    for file in copy.glob("tokenizer*"):
        file.unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_checked(copy)
    model, tokenizer, _ = load_checked(copy, tokenizer=False)
    assert tokenizer is None and model is not None


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen3_next"])
def test_good_checkpoints_pass(checkpoint, family):
    _, tokenizer, config = load_checked(checkpoint(family))
    assert config["model_type"] == family and len(tokenizer.encode("hello world")) > 0


def test_the_demo_model_passes():
    from moe_runtime import demo_model_path

    _, tokenizer, config = load_checked(demo_model_path())
    shipped = json.loads((demo_model_path() / "config.json").read_text())
    assert config["model_type"] == shipped["model_type"] and tokenizer.encode("def f():")
