"""The competitor harness of benchmarks/bench.py: bench checkpoints, fair cold runs of moe, the
unmodified mlx-lm model and BigRig, targets as JSON."""

from ._checkpoint import BenchSpec, bench_checkpoint
from ._harness import BenchConfig, run_bench, targets

__all__ = [
    "BenchConfig",
    "BenchSpec",
    "bench_checkpoint",
    "run_bench",
    "targets",
]
