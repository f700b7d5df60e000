"""Time to first token of a Session started cold (no warm-start state) and warm (the state the
cold run saved on close), each in a fresh process, alternating; writes JSON.

    uv run python benchmarks/warm_start.py --model DIR --capacity 32 --out bench-out/warm_start.json

Without --model it builds a random qwen3_moe checkpoint (8 layers of 64 experts, 8 per token,
q4; about 0.5 GB of experts) with the runtime tests' builder. Before every run the checkpoint's
pages are dropped from the page cache (posix_fadvise DONTNEED on each file, and
/proc/sys/vm/drop_caches when writable), so expert reads go to the disk in both runs. Runs
alternate cold and warm so a noisy machine affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages/moe-runtime/tests"))
    from conftest import build

    geometry = dict(hidden_size=1024, intermediate_size=2048, num_attention_heads=8,
                    head_dim=128, num_hidden_layers=8, num_experts=64, num_experts_per_tok=8,
                    moe_intermediate_size=512)  # fmt: skip
    return build("qwen3_moe", root, **geometry)


def drop_page_cache(model: Path) -> str:
    """Evict the checkpoint's pages so the next run reads from the disk."""
    for f in model.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "posix_fadvise DONTNEED + drop_caches"
    except OSError:
        return "posix_fadvise DONTNEED"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--capacity", type=int, default=32)
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
        dropped = drop_page_cache(args.model)
        cold.append(run_child(args, cache_dir))  # no state yet: cold; saves state on close
        drop_page_cache(args.model)
        warm.append(run_child(args, cache_dir))  # restores what the cold run saved
    shutil.rmtree(work / "cache", ignore_errors=True)

    def summary(runs: list[dict]) -> dict:
        keys = ("load_s", "ttft_s", "start_to_first_token_s", "misses", "bytes_read", "prefetched")
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
        "page_cache": dropped,
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
