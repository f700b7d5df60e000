"""Peak resident memory under a budget, measured in a child process: VmHWM is a process's
high-water mark, so each measurement needs a fresh process that did nothing before the load.

`peak_run` runs this file as that child for any miss mode; the tests assert on what it prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

import moe_core

# A qwen3_moe of 8 layers of 128 experts: ~1.6 GB of random expert bytes at 4 bits.
CONFIG = dict(
    model_type="qwen3_moe", hidden_size=1024, num_hidden_layers=8, intermediate_size=1024,
    num_attention_heads=8, num_key_value_heads=2, head_dim=128, num_experts=128,
    num_experts_per_tok=4, decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=1024,
    rms_norm_eps=1e-6, vocab_size=512, rope_theta=10000.0, tie_word_embeddings=False,
    max_position_embeddings=2048, norm_topk_prob=True,
)  # fmt: skip


def bulk_checkpoint(config: dict, path: Path) -> tuple[Path, int]:
    """A 4-bit checkpoint of random expert bytes (moe-testing's bulk builder) in `path/model`;
    its float32 scales keep MLX's CPU gather_qmm fast. Returns its directory and expert bytes."""
    # Imported here, not at the top: the child process measures only what offloading loads.
    from moe_testing import BulkSpec, build_bulk_checkpoint

    model = build_bulk_checkpoint(BulkSpec(config, dtype="float32"), path / "model")
    return model, json.loads((model / "bulk.json").read_text())["expert_bytes"]


def peak_run(path: Path, budget: int, *, miss: str = "exact") -> dict:
    """Offload the checkpoint at `path` under `budget` with `miss` in a fresh process, prefill 64
    tokens and decode 8; returns the child's peak memory, capacity, counters and copies' bytes."""
    out = subprocess.run(
        [sys.executable, __file__, str(path), str(budget), miss],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(path: Path, budget: int, miss: str) -> dict:
    model, _ = load_model(path, lazy=True)
    handle = moe_core.offload(model, path, memory=budget, miss=miss)
    mx.eval(model.parameters())
    cache = make_prompt_cache(model)
    logits = model(mx.array([list(range(3, 67))]), cache=cache)
    for _ in range(8):
        token = mx.argmax(logits[:, -1], axis=-1)
        logits = model(token[:, None], cache=cache)
        mx.eval(logits)
    stats = handle.stats()
    return {
        "peak": handle.backend.peak_memory(),
        "capacity": handle.capacity,
        "misses": stats["misses"],
        "bytes_read": stats["bytes_read"],
        "lowbit": stats["lowbit"],
        "copies": sum(handle.plan.lowbit_bytes),
        "finite": bool(mx.isfinite(logits).all()),
    }


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
