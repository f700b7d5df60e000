"""A model directory with a broken file: one line naming the file and what is wrong, exit 1, for
every command that loads a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def broken(checkpoint: Path, tmp_path: Path, what: str) -> tuple[Path, str]:
    """A copy of the checkpoint with one defect, and the file the error must name."""
    model = tmp_path / what
    shutil.copytree(checkpoint, model)
    shard = next(model.glob("*.safetensors"))
    config = model / "config.json"
    if what == "truncated-weights":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
        return model, str(shard)
    if what == "unreadable-weights":  # the header length points past the end of the file
        with open(shard, "r+b") as f:
            f.write(b"\xff" * 8)
        return model, str(shard)
    if what == "config-cut-short":
        config.write_text(config.read_text()[:100])
        return model, str(config)
    if what == "config-wrong-type":
        doc = json.loads(config.read_text())
        doc["num_experts"] = str(doc["num_experts"])
        config.write_text(json.dumps(doc))
        return model, str(config)
    if what == "no-tokenizer":
        for file in model.glob("tokenizer*"):
            file.unlink()
        return model, str(model)
    if what == "tokenizer-cut-short":
        file = model / "tokenizer.json"
        file.write_text(file.read_text()[:500])
        return model, str(file)
    raise AssertionError(what)


CASES = [
    ("truncated-weights", "truncated"),
    ("unreadable-weights", "header"),
    ("config-cut-short", "not valid JSON"),
    ("config-wrong-type", 'num_experts is "'),
    ("no-tokenizer", "no tokenizer"),
    ("tokenizer-cut-short", "not valid JSON"),
]


@pytest.mark.parametrize(("what", "says"), CASES, ids=[c[0] for c in CASES])
def test_generate_names_the_file(run, checkpoint, tmp_path, one_line_error, what, says):
    model, file = broken(checkpoint, tmp_path, what)
    one_line_error(run("generate", model, "hi", "-n", "2"), file, says)


@pytest.mark.parametrize(
    "what", ["truncated-weights", "config-cut-short", "config-wrong-type"], ids=str
)
@pytest.mark.parametrize("command", ["inspect", "pack"])
def test_inspect_and_pack_name_the_file(run, checkpoint, tmp_path, one_line_error, what, command):
    model, file = broken(checkpoint, tmp_path, what)
    one_line_error(run(command, model), file)
    assert not list(model.glob("*.moepack*")) and not list(model.glob(".*.tmp"))


def test_a_good_checkpoint_passes_the_checks(checkpoint):
    from moe_runtime import load_checked

    model, tokenizer, config = load_checked(checkpoint)
    assert tokenizer is not None and tokenizer.encode("hello")
    assert config["model_type"] == "qwen3_moe" and model.layers
