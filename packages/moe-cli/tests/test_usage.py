"""What a user types wrong or leaves out, the demo model by name, and help text that reads as
written."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys

import pytest


def test_generate_with_no_argument_says_what_is_missing(run, one_line_error):
    result = run("generate")
    one_line_error(result, "no prompt")
    assert result.exit_code == 2


def test_generate_with_a_model_and_no_prompt_refuses(run, checkpoint, one_line_error):
    result = run("generate", checkpoint)
    one_line_error(result, "no prompt after the model", str(checkpoint))
    assert result.exit_code == 2
    one_line_error(run("generate", "demo"), "no prompt after the model demo")


@pytest.mark.parametrize("value", ["12", "0.5", "4096"])
def test_memory_without_a_unit_is_refused(run, checkpoint, one_line_error, value):
    one_line_error(run("generate", checkpoint, "hi", "--memory", value), "unit", f"{value}GB")
    one_line_error(run("inspect", checkpoint, "--memory", value), "unit")


def test_inspect_takes_demo_or_no_model(run):
    args = ("--disk-mbps", "100", "--capacity", "8", "--json")
    named = run("inspect", "demo", *args)
    assert named.exit_code == 0, named.stderr
    default = run("inspect", *args)
    assert default.exit_code == 0, default.stderr
    assert named.stdout == default.stdout
    from moe_runtime import demo_model_path

    family = json.loads((demo_model_path() / "config.json").read_text())["model_type"]
    assert json.loads(named.stdout)["family"] == family


def test_demo_is_a_model_name_for_the_runtime(tmp_path, monkeypatch):
    from moe_runtime import demo_model_path, resolve_model

    assert resolve_model("demo") == ("moe-demo", demo_model_path())
    assert resolve_model(None) == ("moe-demo", demo_model_path())
    # A directory of that name here is what the user means.
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("demo")[1] == (tmp_path / "demo").resolve()


def test_every_model_argument_is_optional():
    """serve, generate, chat, inspect, pack, profile record and bench all default to the demo."""
    from moe_cli import chat, generate, pack, profile, serve
    from moe_cli import inspect as inspect_cmd

    for command in (serve.serve, chat.chat, inspect_cmd.inspect, pack.pack, profile.record):
        assert inspect.signature(command).parameters["model"].default is None, command
    assert inspect.signature(generate.generate).parameters["first"].default is None


def test_port_agrees_between_cli_server_and_readme():
    import moe_server
    from moe_cli import serve

    cli = inspect.signature(serve.serve).parameters["port"].default
    assert inspect.signature(moe_server.serve).parameters["port"].default == cli
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "README.md"
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)|--port (\d+)", root.read_text()))
    assert {p for pair in ports for p in pair if p} == {str(cli)}


def _helps() -> dict[str, str]:
    """Every command's help, rendered wide so that nothing wraps."""
    commands = ["", "serve", "generate", "chat", "inspect", "bench", "pack", "profile"]
    commands += ["profile record", "profile simulate"]
    out = {}
    for command in commands:
        args = [*command.split(), "--help"]
        result = subprocess.run(
            [sys.executable, "-m", "moe_cli.main", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "400", "TERMINAL_WIDTH": "400"},
        )
        assert result.returncode == 0, result.stderr
        out[command] = result.stdout
    return out


def test_help_text_has_no_stray_spaces_and_lists_profile_model():
    helps = _helps()
    for command, text in helps.items():
        assert not re.search(r"\w \.(\s|$)", text), (command, re.findall(r".{30}\w \.", text))
        assert "[default: chat" not in text
    assert "moe profile [MODEL]" in helps["profile"]
    assert "MODEL" in helps["inspect"]


def test_piped_pack_and_profile_print_one_line_each(tmp_path, checkpoint):
    """stderr to a pipe: no blank line left by a progress bar, and a message longer than 80
    columns stays one line."""
    import shutil

    model = tmp_path / ("model-with-a-long-name-" * 4)
    shutil.copytree(checkpoint, model)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # no warm state from other tests: no warning
    packed = subprocess.run(
        [sys.executable, "-m", "moe_cli.main", "pack", str(model)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert packed.returncode == 0, packed.stderr
    assert packed.stderr.startswith("wrote "), repr(packed.stderr)
    assert packed.stderr.count("\n") == 1 and len(packed.stderr) > 100, packed.stderr
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    args = ["profile", str(model), "--prompts", str(prompts), "--tokens", "2"]
    args += ["--out", str(tmp_path / "p.json"), "--capacity", "4"]
    profiled = subprocess.run(
        [sys.executable, "-m", "moe_cli.main", *args], capture_output=True, text=True, env=env
    )
    assert profiled.returncode == 0, profiled.stderr
    assert profiled.stderr.startswith("profile of "), repr(profiled.stderr)


def test_simulate_on_a_json_file_says_it_is_not_a_trace(run, tmp_path, one_line_error):
    profile = tmp_path / "p.json"
    profile.write_text('{"format": "moe-profile"}')
    result = run("profile", "simulate", profile)
    one_line_error(result, str(profile), "not a routing trace")
    assert "pickle" not in result.stderr
