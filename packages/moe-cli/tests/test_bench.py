"""`moe bench`: the user's own model on this machine, one fresh process per capacity, nothing
installed; the competitor harness is not part of the command any more."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_measures_each_capacity(run, checkpoint, config, tmp_path):
    out = tmp_path / "bench.json"
    result = run(
        "bench", checkpoint, "--capacities", "1.0,0.25", "--prompt", "12", "--decode", "4",
        "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    experts = config(checkpoint)["num_experts"]
    assert doc["experts_per_layer"] == experts
    assert doc["disk"]["random_1_thread_mb_s"] > 0 and doc["disk"]["random_4_threads_mb_s"] > 0
    assert [r["asked"]["capacity"] for r in doc["results"]] == [experts, round(experts / 4)]
    for r in doc["results"]:
        assert r["ok"], r
        assert set(r["capacity"]) == {r["asked"]["capacity"]}
        assert r["generated_tokens"] == 4 and r["decode_tps"] > 0 and r["ttft_s"] > 0
        assert 0 <= r["hit_rate"] <= 1 and r["peak_memory"] > 0
    full, quarter = doc["results"]
    assert quarter["bytes_read"] > 0 and quarter["hit_rate"] < full["hit_rate"] + 1e-9
    assert f"{round(experts / 4)}/{experts}" in result.stdout


def test_bench_with_a_memory_budget(run, checkpoint, tmp_path):
    result = run("bench", checkpoint, "--memory", "16GB", "--prompt", "8", "--decode", "2")
    assert result.exit_code == 0, result.stderr


def test_bad_capacities_are_one_line(run, one_line_error):
    one_line_error(run("bench", "--capacities", "2"), "capacities")
    one_line_error(run("bench", "--capacities", "a,b"), "capacities")


def test_the_command_carries_no_competitor_harness():
    """The command imports nothing that installs or runs other tools."""
    code = "import moe_cli.bench, sys; print(sorted(m for m in sys.modules if 'bigrig' in m or '_bench.' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import importlib.util

    assert importlib.util.find_spec("moe_cli._bench") is None
