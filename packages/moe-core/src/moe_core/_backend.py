"""Memory facts per MLX backend behind one small interface: how much the process may use, how to
hold MLX to a budget, and how much it used at peak.

CPU (Linux): the smaller of MemAvailable (plus what this process already holds) and the cgroup
limit, v1 or v2; peak is the kernel's VmHWM. Metal: the recommended working set. CUDA: the card's
free memory plus what MLX already holds. No backend's keys are read on another.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

_UNLIMITED = 1 << 60


@dataclass(slots=True)
class CPUBackend:
    name: str = "cpu"
    unified_memory: bool = True
    # Exact waves call the kernel with the step's full shape (see `_miss.Exact`); the CPU's
    # gather kernels give a row the same bits in a call of any size, so it need not.
    full_shape_waves: bool = False
    proc: Path = Path("/proc")
    cgroup: Path = Path("/sys/fs/cgroup")

    def available_memory(self) -> int:
        """Bytes this process may hold in all: what it holds now plus what it could still get."""
        limits = [self._meminfo("MemAvailable") + self.process_memory()]
        cgroup = self.cgroup_limit()
        if cgroup is not None:
            limits.append(cgroup)
        return min(limits)

    def process_memory(self) -> int:
        return self._status("VmRSS")

    def peak_memory(self) -> int:
        return self._status("VmHWM")

    def set_limits(self, memory: int) -> None:
        _set_mlx_limits(memory)

    def cache_reserve(self, activations: int) -> int:
        return CACHE_BYTES

    def cgroup_limit(self) -> int | None:
        """The tightest memory limit of this process's cgroup and its ancestors, v2 or v1."""
        try:
            lines = (self.proc / "self" / "cgroup").read_text().splitlines()
        except OSError:
            return None
        limits = []
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2 unified hierarchy
                base, file = self.cgroup, "memory.max"
            elif "memory" in controllers.split(","):
                base, file = self.cgroup / "memory", "memory.limit_in_bytes"
            else:
                continue
            node = base / path.lstrip("/")
            while True:
                value = _read_limit(node / file)
                if value is not None:
                    limits.append(value)
                if node == base or base not in node.parents:
                    break
                node = node.parent
        limits = [v for v in limits if v < _UNLIMITED]
        return min(limits) if limits else None

    def _meminfo(self, key: str) -> int:
        for line in (self.proc / "meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.proc / 'meminfo'} has no {key}")

    def _status(self, key: str) -> int:
        try:
            text = (self.proc / "self" / "status").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0


@dataclass(slots=True)
class MetalBackend:
    name: str = "metal"
    unified_memory: bool = True
    full_shape_waves: bool = True

    def available_memory(self) -> int:
        return int(mx.device_info()["max_recommended_working_set_size"])

    def process_memory(self) -> int:
        return int(mx.get_active_memory())

    def peak_memory(self) -> int:
        return int(mx.get_peak_memory())

    def set_limits(self, memory: int) -> None:
        _set_mlx_limits(memory)

    def cache_reserve(self, activations: int) -> int:
        return CACHE_BYTES


@dataclass(slots=True)
class CUDABackend:
    name: str = "cuda"
    # Experts are read into host staging buffers and uploaded in batches, not written through
    # managed memory page by page.
    unified_memory: bool = False
    full_shape_waves: bool = True

    def available_memory(self) -> int:
        info = mx.device_info()
        # MLX allocates managed memory: never let it plan past what the card has free.
        return int(info["free_memory"]) + int(mx.get_active_memory())

    def process_memory(self) -> int:
        return int(mx.get_active_memory())

    def peak_memory(self) -> int:
        return int(mx.get_peak_memory())

    def set_limits(self, memory: int) -> None:
        # MLX allocates managed memory: past what the card has free it pages to the host, or
        # hangs the GPU, so MLX's limit is lowered to 8/9 of the free memory when it is above
        # that, and never raised. The budget itself is kept by the plan, which reserves room for
        # one prefill chunk's freed buffers (`cache_reserve`), not by MLX's limit: with MLX's
        # limit at the budget and its cache at 64 MB, time to first token was 205 s against
        # 73 s with both left alone, at the same 15.4 GB footprint under a 16 GB budget (H200,
        # 48 layers x 512 experts).
        free = self.available_memory()
        if memory > free:
            warnings.warn(
                f"the memory budget ({memory / 1e9:.1f} GB) is more than the GPU has free "
                f"({free / 1e9:.1f} GB): MLX's managed memory will page to the host",
                stacklevel=3,
            )
        target = free * 8 // 9
        previous = mx.set_memory_limit(target)
        if previous < target:
            mx.set_memory_limit(previous)

    def cache_reserve(self, activations: int) -> int:
        return max(CACHE_BYTES, activations)


Backend = CPUBackend | MetalBackend | CUDABackend


def detect_backend() -> Backend:
    """The backend MLX computes on in this process."""
    if mx.metal.is_available():
        return MetalBackend()
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        from ._warmup import persist_kernel_cache

        persist_kernel_cache()
        return CUDABackend()
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"no memory backend for the CPU on {sys.platform}")
    return CPUBackend()


def _set_mlx_limits(memory: int) -> None:
    # The budget is kept by sizing the slots; MLX's own limit is a backstop above it. Set at the
    # budget itself it stalls every allocation near the top (measured on CUDA: time to first
    # token 171 s against 10 s at the same capacity and the same 15.8 GB peak).
    mx.set_memory_limit(memory + memory // 8)
    mx.set_cache_limit(CACHE_BYTES)


# Freed buffers MLX keeps for reuse count against the budget; this much is reserved for them.
CACHE_BYTES = 64 * 1024 * 1024


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        return int(text)
    except ValueError:
        return None
