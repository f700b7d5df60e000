"""`moe inspect`: geometry read from the checkpoint, the same budget arithmetic as `offload`, and
the disk-bound speed prediction."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest


def inspect_json(run, *args):
    result = run("inspect", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_geometry_matches_the_checkpoint(run, checkpoint, config):
    report = inspect_json(run, checkpoint, "--disk-mbps", "1000")
    config = config(checkpoint)
    assert report["family"] == "qwen3_moe"
    assert report["moe_layers"] == config["num_hidden_layers"]
    assert report["experts"] == config["num_experts"]
    assert report["top_k"] == config["num_experts_per_tok"]
    assert report["shared_experts"] == 0

    # Bytes per expert, counted independently from the tensors themselves.
    tensors = {}
    for shard in checkpoint.glob("*.safetensors"):
        tensors.update(mx.load(str(shard)))
    layer0 = [a for k, a in tensors.items() if ".layers.0." in k and "switch_mlp" in k]
    assert report["bytes_per_expert"] == sum(a.nbytes for a in layer0) // config["num_experts"]
    total = sum(a.nbytes for a in tensors.values())
    assert report["total_bytes"] == total
    assert report["expert_bytes"] + report["non_expert_bytes"] == total
    assert report["disk"] == {"mb_per_s": 1000.0, "measured": False}
    assert report["profile"] is None


def test_capacity_from_memory_is_what_offload_chooses(run, checkpoint):
    from mlx_lm.utils import load_model

    import moe_core

    geometry = moe_core.describe(load_model(checkpoint, lazy=True)[0], checkpoint)
    # A budget that holds only some experts: the process's own memory plus a few slots.
    base = moe_core.plan_budget(geometry, capacity=1)
    fixed = base.base_bytes + base.dense_bytes + base.scratch_bytes
    memory = fixed + 3 * sum(geometry.expert_bytes) + 200 * 2**20
    report = inspect_json(run, checkpoint, "--memory", f"{memory}B", "--disk-mbps", "100")
    model, _ = load_model(checkpoint, lazy=True)
    handle = moe_core.offload(model, checkpoint, memory=memory)
    assert report["fit"]["fits"]
    capacity = report["fit"]["capacity"]
    capacity = capacity if isinstance(capacity, list) else [capacity] * report["moe_layers"]
    # Both measure this process's memory, so allow the slots that a few MB of drift can move.
    for planned, chosen in zip(capacity, handle.capacity, strict=True):
        assert abs(planned - chosen) <= max(2, chosen // 10)
    handle.close()


def test_prediction_is_disk_speed_over_bytes_missed(run, checkpoint, config):
    report = inspect_json(run, checkpoint, "--capacity", "2", "--disk-mbps", "500")
    config = config(checkpoint)
    p = report["prediction"]
    assert p["hit_rate_source"] == "assumed"
    assert p["hit_rate"] == [0.5, 0.9]
    per_token_all_miss = (
        config["num_experts_per_tok"] * report["moe_layers"] * report["bytes_per_expert"]
    )
    for rate, speed in zip(p["hit_rate"], p["tok_s"], strict=True):
        assert speed == pytest.approx(500e6 / (per_token_all_miss * (1 - rate)))
    assert p["tok_s"][1] > p["tok_s"][0]


def test_text_report_and_measured_disk(run, checkpoint):
    result = run("inspect", checkpoint, "--capacity", "2")
    assert result.exit_code == 0, result.stderr
    assert "qwen3_moe" in result.stdout
    assert "2 of " in result.stdout
    assert "MB/s measured" in result.stdout
    assert "tok/s" in result.stdout


def test_all_experts_fit_is_not_disk_bound(run, checkpoint):
    report = inspect_json(run, checkpoint, "--memory", "16GB", "--disk-mbps", "100")
    assert report["fit"]["all_experts_fit"]
    assert report["prediction"]["tok_s"] == [None, None]


def test_memory_too_small_is_reported(run, checkpoint):
    report = inspect_json(run, checkpoint, "--memory", "1MB", "--disk-mbps", "100")
    assert report["fit"]["fits"] is False
    assert "too small" in report["fit"]["reason"]
    assert "prediction" not in report


def test_missing_path(run, tmp_path, one_line_error):
    one_line_error(run("inspect", tmp_path / "nope"), "nope")


def test_not_an_moe_model(run, dense_checkpoint, one_line_error):
    one_line_error(run("inspect", dense_checkpoint), "Mixture-of-Experts")


def test_bad_memory_value(run, checkpoint, one_line_error):
    one_line_error(run("inspect", checkpoint, "--memory", "12XB"), "12XB")


def test_host_memory_is_refused_with_one_memory(run, checkpoint, one_line_error):
    one_line_error(
        run("inspect", checkpoint, "--host-memory", "1GB", "--disk-mbps", "100"),
        "--host-memory is for CUDA",
    )


def test_two_tiers_and_their_speeds(run, checkpoint, monkeypatch):
    """Where the GPU has memory of its own (stood in for by a staged CPU backend): the host
    tier is shown, and its predicted decode speed beats the GPU tier's alone."""
    import moe_core
    import moe_core._plan

    staged = moe_core.CPUBackend(unified_memory=False)
    monkeypatch.setattr(moe_core, "detect_backend", lambda: staged)
    monkeypatch.setattr(moe_core._plan, "detect_backend", lambda: staged)
    report = inspect_json(
        run, checkpoint, "--capacity", "2", "--host-memory", "1GB", "--disk-mbps", "100"
    )
    fit, prediction = report["fit"], report["prediction"]
    assert fit["host_capacity"] == report["experts"] and fit["host_memory"] == 10**9
    tier = prediction["host_tier"]
    assert tier["mb_read_per_token"] == [0.0, 0.0]  # every expert in the two tiers
    assert all(
        t is not None and t > s for t, s in zip(tier["tok_s"], prediction["tok_s"], strict=True)
    )
    text = run(
        "inspect", checkpoint, "--capacity", "2", "--host-memory", "1GB", "--disk-mbps", "100"
    )
    assert "host tier" in text.stdout and "with host" in text.stdout
