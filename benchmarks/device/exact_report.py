"""What differs, case by case, between the offloaded and the unmodified model on this backend.

moe-core's exactness tests say pass or fail; on a new backend (MLX CUDA) one needs to know why.
For each fixture case this prints one line as soon as it is done: whether the unmodified model
agrees with itself run twice (bitwise), NaN counts, whether the greedy tokens match, the largest
logit difference, and whether batched prefill (B=2) matches. Run from the repository root:

    PYTHONPATH=packages/moe-core/src:packages/moe-core/tests:packages/moe-testing/src \\
        python3 benchmarks/device/exact_report.py [family:layout:precision:which ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback

import mlx.core as mx
from _models import greedy, identical, offloaded, prompt, reference, vocab_size
from test_exact import capacity

from moe_testing import CheckpointSpec, build_checkpoint

DEFAULT = [
    "qwen3_moe:stacked:q4:full",
    "qwen3_moe:stacked:q4:half",
    "qwen2_moe:stacked:q4:half",
    "mixtral:stacked:q4:half",
    "mixtral:stacked:q4:top_k",
    "qwen3_moe:stacked:f32:full",
    "qwen3_moe:stacked:f32:half",
    "mixtral:per_expert:f32:half",
]


def nans(logits: list[mx.array]) -> int:
    return sum(int(mx.isnan(x).sum()) for x in logits)


def max_diff(a: list[mx.array], b: list[mx.array]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        d = mx.abs(x.astype(mx.float32) - y.astype(mx.float32))
        d = mx.where(mx.isnan(d), 0.0, d)
        worst = max(worst, float(d.max()))
    return worst


def report(root: str, case: str) -> str:
    family, layout, precision, which = case.split(":")
    path = build_checkpoint(CheckpointSpec(family, layout, precision), root)
    slots = capacity(path, which)
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 40)
    ref_logits, ref_tokens = greedy(ref, tokens, 10)
    ref2_logits, _ = greedy(ref, tokens, 10)
    self_equal = identical(ref_logits, ref2_logits)
    model, handle = offloaded(path, capacity=slots)
    logits, out = greedy(model, tokens, 10)
    steps_equal = [
        mx.array_equal(x, y, equal_nan=True).item() for x, y in zip(logits, ref_logits, strict=True)
    ]
    batch = prompt(vocab_size(ref), 24, batch=2, seed=1)
    rb, ob = ref(batch), model(batch)
    rb2 = ref(batch)
    handle.close()
    return (
        f"{case} slots={slots} ref_self_equal={self_equal} nan_ref={nans(ref_logits)} "
        f"nan_ours={nans(logits)} tokens_equal={out == ref_tokens} "
        f"steps_equal={''.join('=' if s else 'x' for s in steps_equal)} "
        f"max_diff={max_diff(logits, ref_logits):.3g} "
        f"batch_equal={mx.array_equal(ob, rb, equal_nan=True).item()} "
        f"batch_ref_self_equal={mx.array_equal(rb, rb2, equal_nan=True).item()} "
        f"batch_nan_ref={int(mx.isnan(rb).sum())} batch_max_diff={max_diff([ob], [rb]):.3g}"
    )


def main() -> None:
    cases = sys.argv[1:] or DEFAULT
    print("mlx", mx.__version__, mx.default_device(), flush=True)
    with tempfile.TemporaryDirectory() as root:
        for case in cases:
            start = time.perf_counter()
            try:
                line = report(root, case)
            except Exception:  # one broken case must not hide the others
                line = f"{case} ERROR {traceback.format_exc(limit=3)}"
            print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
