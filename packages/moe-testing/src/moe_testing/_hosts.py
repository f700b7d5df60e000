"""Several "hosts" on one machine for multi-host tests: one Linux network namespace per rank,
joined by a bridge that lives in a namespace of its own, addresses 10.99.0.1, .2, ... Nothing
touches the machine's own network, and two test runs at once never share a namespace.

    with Hosts(3, tmp_path) as hosts:
        run = hosts.launch([python, "script.py"], timeout=120)  # mlx.launch, ring backend
        run.wait()
        hosts.cut(2)  # rank 2 falls off the network
        hosts.call(0, fn)  # fn runs in a thread inside rank 0's namespace

Needs root and `ip` (iproute2); `unavailable()` says why they cannot be made, for a skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

SUBNET = "10.99.0"
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if sys.platform != "linux":
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = f"moeprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Hosts:
    """`n` namespaces `moe<pid>h<rank>` on the bridge of `moe<pid>sw`; rank r has 10.99.0.{r+1}."""

    def __init__(self, n: int, workdir: str | os.PathLike[str], *, port: int = 32323) -> None:
        if not 1 <= n <= 200:
            raise ValueError(f"between 1 and 200 hosts, got {n}")
        self.n = n
        self.port = port
        self.workdir = Path(workdir)
        prefix = f"moe{os.getpid()}{threading.get_ident() % 1000}"
        self.switch = f"{prefix}sw"
        self.names = [f"{prefix}h{r}" for r in range(n)]
        self.ips = [f"{SUBNET}.{r + 1}" for r in range(n)]
        self.made: list[str] = []
        self.launches: list[Launch] = []

    # -- the network --------------------------------------------------------------------------

    def __enter__(self) -> Hosts:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for rank, (name, address) in enumerate(zip(self.names, self.ips, strict=True)):
            _ip("netns", "add", name)
            self.made.append(name)
            port = f"p{rank}"
            _ip("link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port,
                "netns", self.switch)  # fmt: skip
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")

    def cut(self, rank: int) -> None:
        """Take a host off the network (its processes keep running)."""
        _ip("-n", self.switch, "link", "set", f"p{rank}", "down")

    def close(self) -> None:
        for launch in self.launches:
            launch.kill()
        for name in self.made:  # anything a launch left behind in our namespaces
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()

    # -- running things there -----------------------------------------------------------------

    def hostfile(self, backend: str = "ring") -> Path:
        """An mlx.launch hostfile: every host started locally, reached at its namespace's address."""
        path = self.workdir / f"hosts{self.n}.json"
        hosts = [{"ssh": "127.0.0.1", "ips": [ip]} for ip in self.ips]
        path.write_text(json.dumps({"backend": backend, "hosts": hosts}))
        return path

    def wrapper(self, *, absent: Sequence[int] = ()) -> Path:
        """A script mlx.launch runs each rank through: it enters the rank's namespace. The ranks in
        `absent` never start their program (as a host whose ssh hangs): they only sleep."""
        path = self.workdir / f"enter{self.n}-{'-'.join(map(str, absent)) or 'all'}.sh"
        # mlx.launch's TMPDIR only catches the files it leaves; the ranks keep the usual one,
        # where MLX caches the CPU kernels it compiles (compiling afresh takes minutes).
        tmpdir = os.environ.get("TMPDIR")
        lines = ["#!/bin/sh", f"export TMPDIR={shlex.quote(tmpdir)}" if tmpdir else "unset TMPDIR"]
        lines.append('case "$MLX_RANK" in')
        for rank, name in enumerate(self.names):
            start = "exec sleep 3600" if rank in absent else f'exec ip netns exec {name} "$@"'
            lines.append(f"  {rank}) {start} ;;")
        lines += ["esac", 'echo "no host for rank $MLX_RANK" >&2', "exit 2"]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        return path

    def launch(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        absent: Sequence[int] = (),
        env: dict[str, str] | None = None,
    ) -> Launch:
        """`mlx.launch --hostfile ... -- <wrapper> argv`, killed (with every rank) after `timeout`
        seconds at the latest, and when the hosts are closed."""
        launcher = Path(sys.executable).parent / "mlx.launch"
        tmp = self.workdir / "launch-tmp"  # mlx.launch leaves its temporary files behind
        tmp.mkdir(exist_ok=True)
        command = [str(launcher), "--hostfile", str(self.hostfile()),
                   "--starting-port", str(self.port), "--", str(self.wrapper(absent=absent)),
                   *argv]  # fmt: skip
        log = self.workdir / f"launch{len(self.launches)}.log"
        launch = Launch(command, log, timeout, {**os.environ, "TMPDIR": str(tmp), **(env or {})})
        self.launches.append(launch)
        return launch

    def call(self, rank: int, fn: Callable[[], _T], timeout: float = 120) -> _T:
        """`fn()` in a thread that has entered rank's network namespace (a client there)."""
        out: dict = {}

        def run() -> None:
            try:
                _enter(self.names[rank])
                out["value"] = fn()
            except BaseException as e:
                out["error"] = e

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call in {self.names[rank]} still running after {timeout} s")
        if "error" in out:
            raise out["error"]
        return out["value"]


class Launch:
    """One mlx.launch run in a session of its own, so that it and every rank end together."""

    def __init__(self, command: list[str], log: Path, timeout: float, env: dict) -> None:
        self.log = log
        self.deadline = time.monotonic() + timeout
        self._out = open(log, "wb")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(
            command, stdout=self._out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._timer = threading.Timer(timeout, self.kill)
        self._timer.daemon = True
        self._timer.start()

    def wait(self, timeout: float | None = None) -> int:
        """The launcher's exit code; raises TimeoutError (after killing it) past its deadline."""
        left = self.deadline - time.monotonic()
        try:
            return self.process.wait(max(0.0, min(left, timeout) if timeout else left))
        except subprocess.TimeoutExpired:
            if timeout is not None and timeout < left:
                raise
            self.kill()
            raise TimeoutError(
                f"launch still running at its deadline; log: {self.output()}"
            ) from None

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        self._timer.cancel()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if not self._out.closed:
            self._out.close()


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter(name: str) -> None:
    """Move the calling thread into network namespace `name` (setns(2); Python 3.11 has no
    os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
