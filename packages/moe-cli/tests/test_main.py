"""The app itself: every command listed, and `moe --help` never imports MLX."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("mlx", "mlx_lm", "numpy", "moe_core", "moe_profiles", "moe_runtime", "moe_server")


def test_importing_the_app_imports_nothing_heavy():
    code = (
        "import sys, moe_cli.main; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("serve", "generate", "chat", "inspect"):
        assert command in result.stdout


def test_console_script_answers_help():
    out = subprocess.run(
        [sys.executable, "-m", "moe_cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "generate" in out.stdout
