"""Shared fixture checkpoints (built once per test session) and a runner for the `moe` app."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_cli.main import app


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A small qwen3_moe checkpoint with a tokenizer and a chat template."""
    from moe_testing import CheckpointSpec, build_checkpoint

    return build_checkpoint(CheckpointSpec(family="qwen3_moe"), tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """Warm-start state goes to a temporary cache, not the user's (subprocesses inherit it)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory, checkpoint) -> Path:
    """A model with no experts at all: what `moe` must refuse in one line."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model

    path = tmp_path_factory.mktemp("dense")
    config = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=256,
                  tie_word_embeddings=True)  # fmt: skip
    model = llama.Model(llama.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    save_model(path, model, donate_model=False)
    save_config(config, path / "config.json")
    for file in checkpoint.glob("tokenizer*"):
        shutil.copy(file, path / file.name)
    return path


@pytest.fixture
def run():
    """Invoke `moe ARGS...` in-process; stdout and stderr stay apart."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(app, [str(a) for a in args], input=input)

    return invoke


def config_of(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


@pytest.fixture
def one_line_error():
    return assert_one_line_error


@pytest.fixture
def config():
    return config_of


def assert_one_line_error(result, *fragments: str) -> None:
    """A user mistake: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.exit_code != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
