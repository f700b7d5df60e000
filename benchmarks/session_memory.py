"""Process memory (RSS) of one Session after each turn of a multi-turn chat; writes JSON.

uv run python benchmarks/session_memory.py --model DIR --turns 20 --out bench-out/session_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

TOPICS = ["the cat", "the dog", "a mat", "the world", "your name", "today"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path)
    p.add_argument("--capacity", type=int, default=24)
    p.add_argument("--turns", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--out", type=Path, default=Path("bench-out/session_memory.json"))
    args = p.parse_args()
    from moe_runtime import Session

    work = Path(tempfile.mkdtemp(prefix="moe-mem-"))
    if args.model is None:
        from moe_testing import CheckpointSpec, build_checkpoint

        args.model = build_checkpoint(CheckpointSpec(family="qwen3_moe"), work / "model")
    session = Session(args.model, capacity=args.capacity, cache_dir=work / "cache")
    rss = [session.handle.backend.process_memory()]
    rows, messages = [], []
    for turn in range(args.turns):
        messages.append({"role": "user", "content": f"tell me about {TOPICS[turn % len(TOPICS)]}"})
        t0 = time.perf_counter()
        reply = session.generate(messages, max_tokens=args.max_tokens)
        messages.append({"role": "assistant", "content": reply})
        s = session.stats()["session"]
        rss.append(session.handle.backend.process_memory())
        rows.append({"turn": turn + 1, "rss_bytes": rss[-1], "seconds": time.perf_counter() - t0,
                     "cached_tokens": s["cached_tokens"], "reused_total": s["prefix_tokens_reused"],
                     "prefilled_total": s["prefilled_tokens"]})  # fmt: skip
    stats = session.stats()
    session.close()
    result = {
        "benchmark": "session_memory",
        "machine": f"{platform.machine()} {platform.system()}",
        "model": str(args.model),
        "capacity": args.capacity,
        "rss_after_load": rss[0],
        "turns": rows,
        "rss_growth_turn1_to_last": rss[-1] - rss[1],
        "kv_reserve_bytes": stats["kv"]["reserve_bytes"],
        "peak_memory": stats["peak_memory"],
        "prefix_cache": stats["session"]["prefix_cache"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "turns"}, indent=2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
