"""Cache policies against Belady's optimum on a routing trace, at 25% and 50% of each layer's experts.

    uv run python benchmarks/policies.py --synthetic            # a skewed synthetic trace
    uv run python benchmarks/policies.py --trace run.npz        # a recorded trace
    uv run python benchmarks/policies.py --fixture              # record one from a tiny random model

Writes `benchmarks/results/policies-<name>.json` and prints a table. Every policy is replayed through
`moe_core.ExpertCache`, the class the offloaded layers run. With `--budgets`, also compares uniform
slots per layer with `allocate_slots` at the same total.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from moe_core import POLICIES
from moe_profiles import Trace, allocate_slots, best_policy, compare, simulate, synthetic_trace

RESULTS = Path(__file__).parent / "results"
FRACTIONS = (0.25, 0.5)


def record_fixture_trace(
    out_dir: Path, *, prompts: int = 8, prompt_tokens: int = 48, decode_tokens: int = 96
) -> Trace:
    """Build a small random-weight qwen3_moe checkpoint, offload it, decode, record its routing."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    import moe_core
    from moe_profiles import TraceRecorder
    from moe_testing import CheckpointSpec, build_checkpoint

    spec = CheckpointSpec("qwen3_moe", num_layers=4, hidden_size=128, num_experts=64, top_k=4)
    out_dir = build_checkpoint(spec, out_dir)
    model, _ = load_model(out_dir, lazy=True)
    handle = moe_core.offload(model, out_dir, capacity=32)
    mx.eval(model.parameters())
    recorder = TraceRecorder.attach(handle, fingerprint=moe_core.fingerprint(out_dir))
    rng = np.random.default_rng(0)
    sampler = make_sampler(temp=0.8)
    for i in range(prompts):
        recorder.segment(f"prompt-{i}")
        cache = make_prompt_cache(model)
        logits = model(mx.array(rng.integers(0, 512, size=(1, prompt_tokens))), cache=cache)
        for _ in range(decode_tokens):
            token = sampler(logits[:, -1])
            logits = model(token[:, None], cache=cache)
        mx.eval(logits)
    handle.close()
    return recorder.trace()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="a recorded .npz trace")
    source.add_argument("--synthetic", action="store_true", help="a skewed synthetic trace")
    source.add_argument("--fixture", action="store_true", help="record from a tiny random model")
    parser.add_argument("--name", help="results name (default: from the source)")
    parser.add_argument("--budgets", action="store_true", help="also uniform vs allocated slots")
    args = parser.parse_args()

    if args.trace:
        trace, name, about = (
            Trace.load(args.trace),
            args.name or args.trace.stem,
            str(args.trace.name),
        )
    elif args.synthetic:
        params = dict(
            num_layers=12,
            num_experts=128,
            top_k=8,
            steps=3000,
            skew=1.0,
            seed=0,
            segments=12,
            prefill=64,
        )
        trace, name, about = synthetic_trace(**params), args.name or "synthetic", params
    else:
        with tempfile.TemporaryDirectory() as tmp:
            trace = record_fixture_trace(Path(tmp))
        name = args.name or "fixture-qwen3_moe"
        about = "random-weight qwen3_moe, 4 MoE layers x 64 experts, top-4, 8 prompts of 48 random tokens + 96 sampled"

    start = time.perf_counter()
    rows = compare(trace, FRACTIONS, POLICIES)
    best = best_policy(rows)
    budgets = []
    if args.budgets:
        for fraction in FRACTIONS:
            uniform = [max(trace.top_k, round(fraction * e)) for e in trace.num_experts]
            caps = allocate_slots(trace, sum(uniform))
            budgets.append(
                {
                    "fraction": fraction,
                    "total_slots": sum(uniform),
                    "capacities": caps,
                    "uniform_hit_rate": simulate(trace, uniform, "lfuda").hit_rate,
                    "allocated_hit_rate": simulate(trace, caps, "lfuda").hit_rate,
                }
            )
    result = {
        "benchmark": "policies",
        "trace": about,
        "fingerprint": trace.fingerprint,
        "layers": trace.num_layers,
        "num_experts": list(trace.num_experts),
        "top_k": trace.top_k,
        "steps": trace.num_steps,
        "tokens": trace.num_tokens,
        "machine": {"system": platform.platform(), "python": sys.version.split()[0]},
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
        "best_policy": best,
        "budgets": budgets,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"policies-{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")

    print(
        f"{name}: {trace.num_layers} layers x {trace.num_experts[0]} experts, top-{trace.top_k}, "
        f"{trace.num_steps} steps, {trace.num_tokens} tokens"
    )
    print(f"{'capacity':>8}  {'policy':<6} {'hit rate':>8} {'belady':>8} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['capacity']:>8.0%}  {row['policy']:<6} {row['hit_rate']:>8.3f} "
            f"{row['belady_hit_rate']:>8.3f} {row['ratio']:>6.3f}"
        )
    for b in budgets:
        print(
            f"budget {b['fraction']:.0%}: uniform {b['uniform_hit_rate']:.3f} -> allocated "
            f"{b['allocated_hit_rate']:.3f} {b['capacities']}"
        )
    print(f"best policy: {best}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
