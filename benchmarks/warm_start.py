"""Time to first token of a Session started cold (no warm-start state) and warm (the state the
cold run saved on close), each in a fresh process, alternating; writes JSON.

    uv run python benchmarks/warm_start.py --model DIR --capacity 24 --out bench-out/warm_start.json

Without --model it builds a qwen3_moe checkpoint with moe-testing. Runs alternate cold and warm
so a noisy machine affects both alike; the page cache is warm for both (drop it yourself, as
root, between runs for a cold-disk figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = [
    {"role": "user", "content": "the cat sat on the mat and the dog sat on the mat " * 6},
]


def child(args) -> None:
    t0 = time.perf_counter()
    from moe_runtime import Session

    session = Session(args.model, capacity=args.capacity, cache_dir=args.cache_dir)
    loaded = time.perf_counter()
    tokens, first = [], None
    for r in session.stream(PROMPT, max_tokens=args.max_tokens):
        if first is None:
            first = time.perf_counter()
        tokens.append(r.token)
    stats = session.stats()
    session.close()
    print(
        json.dumps(
            {
                "load_s": loaded - t0,
                "ttft_s": first - loaded,
                "start_to_first_token_s": first - t0,
                "restored": stats["session"]["warm_start"]["restored"],
                "prefetched": stats["session"]["warm_start"]["prefetched"],
                "misses": stats["misses"],
                "bytes_read": stats["bytes_read"],
                "tokens": tokens,
            }
        )
    )


def run_child(args, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(args.model),
           "--capacity", str(args.capacity), "--cache-dir", str(cache_dir),
           "--max-tokens", str(args.max_tokens)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def default_model(root: Path) -> Path:
    from moe_testing import CheckpointSpec, build_checkpoint

    return build_checkpoint(
        CheckpointSpec(family="qwen3_moe", layout="stacked", precision="q4", seed=0), root
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--capacity", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench-out/warm_start.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    work = Path(tempfile.mkdtemp(prefix="moe-warm-"))
    args.model = args.model or default_model(work / "model")
    cold, warm = [], []
    for _ in range(args.runs):
        cache_dir = work / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        cold.append(run_child(args, cache_dir))  # no state yet: cold; saves state on close
        warm.append(run_child(args, cache_dir))  # restores what the cold run saved
    shutil.rmtree(work / "cache", ignore_errors=True)

    def summary(runs: list[dict]) -> dict:
        keys = ("load_s", "ttft_s", "start_to_first_token_s", "misses", "bytes_read")
        return {k: statistics.median(r[k] for r in runs) for k in keys} | {
            "restored": [r["restored"] for r in runs]
        }

    result = {
        "benchmark": "warm_start",
        "machine": f"{platform.machine()} {platform.system()}, {platform.processor() or ''}".strip(
            ", "
        ),
        "model": str(args.model),
        "capacity": args.capacity,
        "runs": args.runs,
        "cold": summary(cold),
        "warm": summary(warm),
        "ttft_ratio_warm_over_cold": statistics.median(
            w["ttft_s"] / c["ttft_s"] for c, w in zip(cold, warm, strict=True)
        ),
        "start_ratio_warm_over_cold": statistics.median(
            w["start_to_first_token_s"] / c["start_to_first_token_s"]
            for c, w in zip(cold, warm, strict=True)
        ),
        "identical_output": all(
            c["tokens"] == w["tokens"] for c, w in zip(cold, warm, strict=True)
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
