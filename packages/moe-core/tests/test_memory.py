"""The memory budget is a promise: a checkpoint whose experts are several times the budget runs
with the process's peak resident memory (VmHWM) under it, during load and generation."""

import json
import subprocess
import sys
import textwrap

import pytest

from moe_testing import BulkSpec, build_bulk_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM")

BUDGET = 400 * 1024 * 1024

CONFIG = dict(
    model_type="qwen3_moe", hidden_size=1024, num_hidden_layers=8, intermediate_size=1024,
    num_attention_heads=8, num_key_value_heads=2, head_dim=128, num_experts=128,
    num_experts_per_tok=4, decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=1024,
    rms_norm_eps=1e-6, vocab_size=512, rope_theta=10000.0, tie_word_embeddings=False,
    max_position_embeddings=2048, norm_topk_prob=True,
)  # fmt: skip


def write_big_checkpoint(path):
    """A 4-bit checkpoint with ~1.6 GB of random expert bytes (moe-testing's bulk builder); its
    float32 scales keep MLX's CPU gather_qmm fast. Returns its directory and its expert bytes."""
    path = build_bulk_checkpoint(BulkSpec(CONFIG, dtype="float32"), path / "model")
    return path, json.loads((path / "bulk.json").read_text())["expert_bytes"]


RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model
    import moe_core

    path, budget = Path(sys.argv[1]), int(sys.argv[2])
    model, _ = load_model(path, lazy=True)
    handle = moe_core.offload(model, path, memory=budget)
    mx.eval(model.parameters())
    cache = make_prompt_cache(model)
    logits = model(mx.array([list(range(3, 67))]), cache=cache)
    for _ in range(8):
        token = mx.argmax(logits[:, -1], axis=-1)
        logits = model(token[:, None], cache=cache)
        mx.eval(logits)
    stats = handle.stats()
    print(json.dumps({"peak": handle.backend.peak_memory(), "capacity": handle.capacity,
                      "misses": stats["misses"], "bytes_read": stats["bytes_read"],
                      "finite": bool(mx.isfinite(logits).all())}))
    """
)


def test_peak_memory_stays_under_budget_with_experts_four_times_larger(tmp_path):
    path, expert_bytes = write_big_checkpoint(tmp_path)
    assert expert_bytes > 4 * BUDGET
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(path), str(BUDGET)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["peak"] < BUDGET, result
    assert 4 <= min(result["capacity"]) < CONFIG["num_experts"]
    assert result["bytes_read"] > 0


def test_budget_too_small_says_the_minimum(tmp_path):
    path, _ = write_big_checkpoint(tmp_path)
    from mlx_lm.utils import load_model

    import moe_core

    model, _ = load_model(path, lazy=True)
    with pytest.raises(moe_core.BudgetError, match="needs at least"):
        moe_core.offload(model, path, memory=120 * 1024 * 1024)
