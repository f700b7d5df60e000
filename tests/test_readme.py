"""The README's commands work as written in a fresh copy of the repository: "Run it" installs only
what running needs, and "Use it" puts a `moe` on PATH whose every example line runs.

The copy gets its own uv tool directory and a PATH without this environment's `moe`, as a new
machine would have; the package registry (or uv's cache) is the only thing shared.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines(section: str) -> list[str]:
    """The command lines of the bash blocks under `## {section}`, in order."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    assert blocks, f"no bash block under ## {section}"
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A copy of the repository's files (as a clone has them) and a clean environment."""
    base = tmp_path_factory.mktemp("fresh")
    repo = base / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = repo / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    bin_dir = base / "bin"
    ours = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p not in ours]
    path = [p for p in path if not (Path(p) / "moe").exists()]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    env.update(
        PATH=os.pathsep.join([str(bin_dir), *path]),
        UV_TOOL_DIR=str(base / "tools"),
        UV_TOOL_BIN_DIR=str(bin_dir),
        XDG_CACHE_HOME=str(base / "cache"),
        HF_HUB_OFFLINE="1",
    )
    assert shutil.which("moe", path=env["PATH"]) is None
    return repo, env


def sh(command: str, cwd: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, **kw
    )


def test_run_it_works_and_installs_only_what_running_needs(fresh):
    repo, env = fresh
    (line,) = bash_lines("Run it")
    command = line.removeprefix("pip install uv && ")  # uv is here already
    out = sh(command + " --max-tokens 16", repo, env, timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip(), "no text generated"
    # The same command, asking its environment what it holds instead of running moe.
    probe = "python -c \"import importlib.util as u; print([m for m in ('pytest', 'ruff', 'nox', 'moe_testing') if u.find_spec(m)])\""
    held = sh(re.sub(r"\bmoe generate .*$", probe, command), repo, env, timeout=600)
    assert held.returncode == 0, held.stderr
    assert held.stdout.strip() == "[]", held.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_use_it_commands_work_as_written(fresh, tmp_path):
    repo, env = fresh
    lines = bash_lines("Use it")
    setup = [line for line in lines if not line.startswith("moe ")]
    assert setup, "the README says nothing of how `moe` gets on PATH"
    for line in setup:
        out = sh(line, repo, env, timeout=900)
        assert out.returncode == 0, (line, out.stderr)
    work = tmp_path
    (work / "prompt.txt").write_text("def add(a, b):")
    examples = [line for line in lines if line.startswith("moe ")]
    assert any(line.startswith("moe generate") for line in examples)
    for line in examples:
        command = line.split("  #")[0].strip().replace("MODEL", "demo")
        if command.startswith("moe generate"):
            command += " --max-tokens 4"
        if command.startswith("moe profile") and "simulate" not in command:
            command += " --tokens 2"
        if command.startswith("moe serve"):
            _serve(command, work, env)
            continue
        stdin = "/exit\n" if command.startswith("moe chat") else None
        out = sh(command, work, env, timeout=600, input=stdin)
        assert out.returncode == 0, (command, out.stderr)
        assert "Traceback" not in out.stderr, (command, out.stderr)


def _serve(command: str, cwd: Path, env: dict) -> None:
    """Start the README's serve line on a free port, wait until it listens, stop it."""
    port = free_port()
    command = re.sub(r"--port \d+", f"--port {port}", command)
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, (command, proc.stderr.read())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"{command}: not listening after 300 s")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (command, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
