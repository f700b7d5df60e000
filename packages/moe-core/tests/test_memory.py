"""The memory budget is a promise: a checkpoint whose experts are several times the budget runs
with the process's peak resident memory (VmHWM) under it, during load and generation."""

import json
import struct
import subprocess
import sys
import textwrap

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import qwen3_moe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM")

BUDGET = 400 * 1024 * 1024

CONFIG = dict(
    model_type="qwen3_moe", hidden_size=1024, num_hidden_layers=8, intermediate_size=1024,
    num_attention_heads=8, num_key_value_heads=2, head_dim=128, num_experts=128,
    num_experts_per_tok=4, decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=1024,
    rms_norm_eps=1e-6, vocab_size=512, rope_theta=10000.0, tie_word_embeddings=False,
    max_position_embeddings=2048, norm_topk_prob=True,
    quantization={"group_size": 64, "bits": 4},
)  # fmt: skip

_ST = {mx.uint32: "U32", mx.bfloat16: "BF16", mx.float32: "F32", mx.float16: "F16"}


def write_big_checkpoint(path):
    """A 4-bit checkpoint with ~1.6 GB of experts. Expert bytes are random (their values do not
    matter here); the rest comes from mlx-lm's own model class."""
    model = qwen3_moe.Model(qwen3_moe.ModelArgs.from_dict(CONFIG))
    # float32 scales: MLX's CPU gather_qmm is many times slower with bf16 ones.
    nn.quantize(model, 64, 4)
    rng = np.random.default_rng(0)
    header, chunks, offset = {}, [], 0
    for name, arr in tree_flatten(model.parameters()):
        if ".switch_mlp." in name:
            if arr.dtype == mx.uint32:
                data = rng.integers(0, 2**32, size=arr.shape, dtype=np.uint32).tobytes()
            else:  # scales and biases: small and finite
                assert arr.dtype == mx.float32
                data = np.full(arr.shape, 2**-10, dtype=np.float32).tobytes()
        else:
            mx.eval(arr)
            view = arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr
            data = np.array(view).tobytes()
        header[name] = {"dtype": _ST[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}  # fmt: skip
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for chunk in chunks:
            f.write(chunk)
    (path / "config.json").write_text(json.dumps(CONFIG))
    return sum(len(c) for n, c in zip(header, chunks, strict=True) if ".switch_mlp." in n)


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
    expert_bytes = write_big_checkpoint(tmp_path)
    assert expert_bytes > 4 * BUDGET
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path), str(BUDGET)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["peak"] < BUDGET, result
    assert 4 <= min(result["capacity"]) < CONFIG["num_experts"]
    assert result["bytes_read"] > 0


def test_budget_too_small_says_the_minimum(tmp_path):
    write_big_checkpoint(tmp_path)
    from mlx_lm.utils import load_model

    import moe_core

    model, _ = load_model(tmp_path, lazy=True)
    with pytest.raises(moe_core.BudgetError, match="needs at least"):
        moe_core.offload(model, tmp_path, memory=120 * 1024 * 1024)
