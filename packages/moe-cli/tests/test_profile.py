"""`moe profile`: a recorded profile and trace of the model, and `moe profile simulate` on it."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def recorded(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    prompts = out / "prompts.json"
    prompts.write_text(json.dumps(["def add(a, b):", [{"role": "user", "content": "hello"}]]))
    from typer.testing import CliRunner

    from moe_cli.main import app

    args = ["profile", str(checkpoint), "--prompts", str(prompts), "--tokens", "4",
            "--out", str(out / "p.json"), "--trace", str(out / "t.npz"), "--capacity", "4"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_profile_matches_the_model(recorded, checkpoint, config):
    import moe_core
    from moe_profiles import Profile, Trace

    out, result = recorded
    profile = Profile.load(out / "p.json")
    profile.check(moe_core.fingerprint(checkpoint))
    cfg = config(checkpoint)
    assert list(profile.num_experts) == [cfg["num_experts"]] * cfg["num_hidden_layers"]
    trace = Trace.load(out / "t.npz")
    assert [s.name for s in trace.segments] == ["prompts.json[0]", "prompts.json[1]"]
    # Every generated token and every prompt token was routed through every MoE layer, top-k each.
    counts = [sum(c) for c in profile.counts]
    assert all(c == counts[0] for c in counts)
    assert trace.num_tokens > 8
    assert "written to" in result.stderr


def test_simulate_reports_policies_against_belady(run, recorded):
    out, _ = recorded
    result = run(
        "profile", "simulate", out / "t.npz", "--capacity", "4,8", "--policy", "lru,lfuda", "--json"
    )
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(r["capacity"], r["policy"]) for r in rows} == {
        (4, "lru"),
        (4, "lfuda"),
        (8, "lru"),
        (8, "lfuda"),
    }
    for row in rows:
        assert row["fit_steps"] > 0 and row["held_out_steps"] > 0
        for part in ("fit", "held_out"):
            assert 0 <= row[f"{part}_hit_rate"] <= row[f"{part}_belady_hit_rate"] <= 1
    text = run("profile", "simulate", out / "t.npz", "--capacity", "0.5")
    assert text.exit_code == 0 and "belady" in text.stdout and "held out" in text.stdout


def test_profile_errors(run, checkpoint, tmp_path, one_line_error):
    one_line_error(
        run("profile", checkpoint, "--out", tmp_path / "p.json", "--preset", "nope"), "nope"
    )
    one_line_error(
        run("profile", checkpoint, "--out", tmp_path / "p.json", "--prompts", tmp_path / "x.txt"),
        "x.txt",
    )
    one_line_error(run("profile", "simulate", tmp_path / "missing.npz"), "missing.npz")
    one_line_error(run("profile", "simulate", tmp_path / "t.npz", "--capacity", "2.5"), "2.5")


def test_inspect_predicts_with_the_profile(run, recorded, checkpoint):
    from moe_profiles import Trace, simulate

    out, _ = recorded
    args = ("inspect", checkpoint, "--capacity", "4", "--disk-mbps", "100", "--json")
    report = json.loads(run(*args, "--profile", out / "p.json").stdout)
    p = report["prediction"]
    assert p["hit_rate_source"] == "profile"
    expected = simulate(Trace.load(out / "t.npz"), 4).hit_rate
    assert p["hit_rate"][0] == pytest.approx(expected, abs=0.05)
    assert report["profile"]["source"]["prompts"].endswith("prompts.json")


def test_inspect_refuses_another_models_profile(
    run, recorded, checkpoint, tmp_path, one_line_error
):
    out, _ = recorded
    doc = json.loads((out / "p.json").read_text())
    doc["fingerprint"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(doc))
    one_line_error(run("inspect", checkpoint, "--profile", tmp_path / "other.json"), "0" * 16)
