"""The machine side of a fair run: dropping a checkpoint's page cache, an equal memory cap per
child through cgroups (v1 or v2, when root), the raw disk's own read speed, and what the machine
is (for the JSON)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path


def files_of(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def drop_cache(paths: list[Path]) -> dict:
    """Evict every file of `paths` from the page cache; also drop_caches when root can."""
    for p in paths:
        for f in files_of(p) if Path(p).is_dir() else [Path(p)]:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    dropped = False
    with contextlib.suppress(OSError):
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        dropped = True
    return {"fadvise": True, "drop_caches": dropped}


class MemoryCap:
    """A cgroup holding one child at `limit` bytes; `available` says whether caps can be set."""

    V1 = Path("/sys/fs/cgroup/memory")
    V2 = Path("/sys/fs/cgroup")

    def __init__(self) -> None:
        self.version = None
        if os.geteuid() == 0:
            if (self.V1 / "memory.limit_in_bytes").exists():
                self.version = 1
            elif (self.V2 / "cgroup.controllers").exists():
                self.version = 2
        self.why_not = None if self.version else "not root or no cgroup memory controller"

    @property
    def available(self) -> bool:
        return self.version is not None

    @contextlib.contextmanager
    def group(self, limit: int | None):
        """Yields the file a child writes its pid to (None: no cap)."""
        if not self.available or limit is None:
            yield None
            return
        root = self.V1 if self.version == 1 else self.V2
        path = root / f"moe-bench-{os.getpid()}"
        path.mkdir(exist_ok=True)
        try:
            if self.version == 1:
                (path / "memory.limit_in_bytes").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
            else:
                (path / "memory.max").write_text(str(limit))
            yield path / "cgroup.procs"
        finally:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def run_child(argv: list[str], procs: Path | None, env: dict | None = None, timeout=None):
    """Run a child (put in the cgroup before it execs) and return its result line's JSON."""

    def enter():
        if procs is not None:
            procs.write_text(str(os.getpid()))

    out = subprocess.run(
        argv, capture_output=True, text=True, env=env, preexec_fn=enter, timeout=timeout
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (out.stderr or out.stdout)[-800:]
    return {
        "ok": False,
        "error": f"child exited {out.returncode} (killed: over the cap?)",
        "tail": tail,
    }


def disk_speed(path: Path, banks, *, threads: int = 4) -> dict:
    """The raw disk on the checkpoint's own files, cold: expert-sized random reads with one
    thread and with `threads` (the readers moe uses), by the probe `moe inspect` and `moe bench`
    use, and sequential MB/s."""
    from moe_cli._disk import measure_disk

    result = {"expert_bytes": banks[0].expert_bytes}
    for label, workers in (("random_1_thread", 1), (f"random_{threads}_threads", threads)):
        result[f"{label}_mb_s"] = measure_disk(banks, 2.0, threads=workers)
    drop_cache([path])
    total, start, limit = 0, time.perf_counter(), 2 << 30
    for f in files_of(path):
        with open(f, "rb", buffering=0) as fh:
            while total < limit and (chunk := fh.read(8 << 20)):
                total += len(chunk)
    result["sequential_mb_s"] = total / (time.perf_counter() - start) / 1e6
    result["sequential_bytes"] = total
    return result


def machine() -> dict:
    """CPU, cores, RAM, disk, kernel, package versions, date."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    ram = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        ram = next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemTotal:")), 0)
    disk = ""
    with contextlib.suppress(Exception):
        disk = subprocess.run(
            ["df", "-h", "--output=source,fstype,size,avail", str(Path.home())],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
    versions = {}
    for pkg in ("mlx", "mlx-lm", "numpy", "moe-core", "moe-profiles", "moe-cli"):
        with contextlib.suppress(PackageNotFoundError):
            versions[pkg] = version(pkg)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "disk": disk,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def scales_choice() -> dict:
    """gather_qmm time for one token through 10 experts of the bench geometry, with float32 and
    with bfloat16 scales: MLX's CPU kernel is much slower with bf16, so the bench uses float32."""
    import mlx.core as mx

    timings = {}
    w = mx.random.randint(0, 2**31, (64, 512, 2048 // 8)).astype(mx.uint32)
    x = mx.random.normal((1, 1, 2048))
    idx = mx.arange(10).reshape(1, 10)
    for dtype in (mx.float32, mx.bfloat16):
        s = mx.full((64, 512, 2048 // 64), 2**-10, dtype=dtype)
        xs = x.astype(dtype)

        def f(xs=xs, s=s):
            return mx.gather_qmm(xs, w, s, s, rhs_indices=idx, transpose=True)

        mx.eval(f())
        start = time.perf_counter()
        for _ in range(5):
            mx.eval(f())
        timings[str(dtype).rsplit(".", 1)[-1]] = (time.perf_counter() - start) / 5 * 1e3
    return {"gather_qmm_ms": timings}
