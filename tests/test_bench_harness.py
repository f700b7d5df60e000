"""The competitor harness (benchmarks/bench.py) end to end on a tiny bench checkpoint: fresh
child runs, cold cache, JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from harness import BenchConfig, BenchSpec, run_bench  # noqa: E402

TINY = dict(
    hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
    head_dim=64, linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=64,
    linear_value_head_dim=64, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=64,
    shared_expert_intermediate_size=64, full_attention_interval=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    cache = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(
        spec=BenchSpec(layers=2, vocab_size=256, overrides=TINY),
        capacities=(1.0, 0.5),
        prompts=(12,),
        decode_tokens=4,
        repeats=1,
        contenders=("mlx", "moe"),
        cap=False,
        cache_dir=cache,
    )
    return run_bench(cfg, log=lambda m: None)


def test_json_has_machine_disk_and_every_run(doc):
    assert {
        "machine",
        "checkpoint",
        "settings",
        "scales",
        "memory_cap",
        "disk",
        "results",
        "targets",
    } <= doc.keys()
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["ram_bytes"] > 0
    assert doc["memory_cap"]["enabled"] is False and doc["memory_cap"]["why_not"]
    assert doc["disk"]["random_1_thread_mb_s"] > 0 and doc["disk"]["sequential_mb_s"] > 0
    assert doc["checkpoint"]["num_experts"] == 16
    runs = {(r["contender"], r["capacity_fraction"]) for r in doc["results"]}
    assert runs == {
        ("mlx-lm (resident)", 1.0),
        ("moe (checkpoint)", 1.0),
        ("moe (checkpoint)", 0.5),
    }
    for r in doc["results"]:
        assert r["ok_runs"] == 1, r["errors"]
        assert r["decode_tps"] > 0 and r["prefill_tps"] > 0 and 0 < r["ttft_s"] < 60
        assert r["peak_memory"] > 10 << 20
        assert r["raw"][0]["cold"]["fadvise"] is True


def test_moe_rows_carry_cache_figures_and_exactness(doc):
    rows = {(r["contender"], r["capacity_fraction"]): r for r in doc["results"]}
    mlx = rows["mlx-lm (resident)", 1.0]["raw"][0]
    for frac in (1.0, 0.5):
        r = rows["moe (checkpoint)", frac]
        assert 0 <= r["hit_rate"] <= 1 and 0 <= r["belady_hit_rate"] <= 1
        assert r["miss_service_mb_s"] > 0 and r["bytes_per_decode_token"] is not None
        assert 0.2 <= r["top20_share"] <= 1
        # exact mode: the same greedy tokens as the unmodified model
        assert r["raw"][0]["last_token"] == mlx["last_token"]
        p = r["prefill"]
        assert p["chunks"] >= 2 and 0 < p["misses"] <= p["touched"]
    # Demand fetching cannot beat Belady's optimum; at capacity == experts moe also reads the
    # experts decode has not touched yet in the background, so their first use is a hit.
    half, full = rows["moe (checkpoint)", 0.5], rows["moe (checkpoint)", 1.0]
    assert half["hit_rate"] <= half["belady_hit_rate"] + 1e-9
    assert full["hit_rate"] >= full["belady_hit_rate"] - 1e-9


def test_targets_are_ratios_of_the_rows(doc):
    t = doc["targets"]
    (first,) = t["1_resident_decode_vs_mlx"]
    rows = {(r["contender"], r["capacity_fraction"]): r for r in doc["results"]}
    expect = (
        rows["moe (checkpoint)", 1.0]["decode_tps"] / rows["mlx-lm (resident)", 1.0]["decode_tps"]
    )
    assert first["ratio"] == pytest.approx(expect)
    assert first["met"] == (expect >= 0.95)
    assert t["2_vs_bigrig"] == []  # BigRig was not asked for
    assert [r["capacity_fraction"] for r in t["4_hit_rate_vs_belady"]] == [0.5]


def test_script_rejects_bad_capacities_in_one_line():
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--capacities", "2", "--no-cap"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "capacities" in out.stderr and "Traceback" not in out.stderr
