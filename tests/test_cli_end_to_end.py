"""The README's commands, run as a user would: the installed `moe` script, no model given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MOE = Path(sys.executable).parent / "moe"


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def moe(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MOE), *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def test_help_lists_the_commands():
    out = moe("--help", timeout=60)
    assert out.returncode == 0, out.stderr
    for command in ("serve", "generate", "chat", "profile", "inspect"):
        assert command in out.stdout


def test_readme_run_command_uses_the_demo_model():
    """`moe generate "def fibonacci(n):"`: one positional is the prompt, the model is the demo."""
    from moe_runtime import demo_model_path

    assert (demo_model_path() / "config.json").is_file()
    out = moe("generate", "def fibonacci(n):", "--max-tokens", "24", "--verbose")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "no text generated"
    assert "Traceback" not in out.stderr
    assert "hit rate" in out.stderr  # the demo model runs offloaded, like any other
