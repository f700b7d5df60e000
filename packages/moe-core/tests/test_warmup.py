"""The kernel warm-up's helpers (CUDA) build a few-layer copy of the model with random weights
and run each phase; here on the CPU, where they must run to the end as well."""

import json
import subprocess
import sys

import pytest

from moe_core import _warmup


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_moe"])
def test_every_phase_runs(moe_checkpoint, tmp_path, family):
    path = moe_checkpoint(family, "stacked", "q4")
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"path": str(path), "config": json.loads((path / "config.json").read_text())})
    )
    for phase in _warmup.PHASES:
        done = subprocess.run(
            [sys.executable, "-m", "moe_core._warmup", str(spec), phase],
            capture_output=True,
            text=True,
            env={"MOE_WARMUP_HELPER": "1", **__import__("os").environ},
        )
        assert done.returncode == 0, (phase, done.stderr[-2000:])


def test_the_signature_ignores_sizes_only():
    base = {"model_type": "qwen3_moe", "hidden_size": 64, "num_hidden_layers": 2, "num_experts": 8}
    same = dict(base, num_hidden_layers=48, num_experts=512)
    other = dict(base, hidden_size=128)
    assert _warmup._signature(base, "0.1") == _warmup._signature(same, "0.1")
    assert _warmup._signature(base, "0.1") != _warmup._signature(other, "0.1")
    assert _warmup._signature(base, "0.1") != _warmup._signature(base, "0.2")


def test_no_helpers_without_a_gpu(moe_checkpoint):
    """On the CPU there is no kernel compile to hide (and no free GPU memory to run them in)."""
    assert _warmup.start(moe_checkpoint("qwen3_moe", "stacked", "q4")) is None
