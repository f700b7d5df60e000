"""Bench checkpoints: the Qwen3-Coder-Next geometry (qwen3_next: hybrid linear attention in 3 of
4 layers, a shared expert, 512 experts of ~1.77 MB at 4 bits, top-10) with as many layers as
asked, built by moe-testing's bulk builder (random expert bytes, never computed) and cached. Each
MoE layer's router rows are scaled by `(rank + 1) ** -zipf` over a per-layer random permutation
of the experts, so a few experts take most routings as in real models (the bench measures and
reports the actual share)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moe_testing import QWEN3_CODER_NEXT, BulkSpec, build_bulk_checkpoint


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What a bench checkpoint is; its hash names its cache directory."""

    layers: int = 6
    scales: str = "float32"  # "float32" | "bfloat16"; see the JSON's `scales` entry for why
    zipf: float = 0.1  # router skew: row e of the gate scaled by (rank+1)**-zipf
    vocab_size: int = 8192
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # config keys to change (tests: tiny models)

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        if self.scales not in ("float32", "bfloat16"):
            raise ValueError(f"scales must be float32 or bfloat16, got {self.scales!r}")
        if self.zipf < 0:
            raise ValueError(f"zipf must be >= 0, got {self.zipf}")

    def config(self) -> dict:
        cfg = dict(QWEN3_CODER_NEXT, num_hidden_layers=self.layers, vocab_size=self.vocab_size)
        cfg.update(self.overrides)
        return cfg

    def bulk(self) -> BulkSpec:
        return BulkSpec(self.config(), dtype=self.scales, zipf=self.zipf, seed=self.seed)


def bench_checkpoint(spec: BenchSpec, cache_dir: Path, log=print) -> Path:
    """The checkpoint for `spec` under `cache_dir`, built on first use."""
    bulk = spec.bulk()
    path = Path(cache_dir) / "checkpoints" / bulk.name
    if not (path / "bulk.json").exists():
        log(f"building bench checkpoint {path.name} ...")
    return build_bulk_checkpoint(bulk, path)
