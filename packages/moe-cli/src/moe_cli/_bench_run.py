"""One timed `moe bench` run in a fresh process: `python -m moe_cli._bench_run SPEC_JSON` prints
one `BENCH-RESULT {json}` line. A fresh process per run keeps runs apart: nothing of one run's
experts stays resident for the next, and its peak memory is its own."""

from __future__ import annotations

import json
import sys
import time


def run(spec: dict) -> dict:
    import numpy as np

    from moe_runtime import Session

    start = time.perf_counter()
    options = {k: spec[k] for k in ("capacity", "memory") if spec.get(k) is not None}
    session = Session(spec["model"], warm_start=False, prefix_cache=False, **options)
    load_s = time.perf_counter() - start
    with session:
        vocab = len(session.tokenizer.vocab)
        rng = np.random.default_rng(spec.get("seed", 0))
        prompt = rng.integers(1, vocab, size=spec["prompt_tokens"]).tolist()
        session.handle.reset_stats()
        start = time.perf_counter()
        first = last = None
        count = 0
        for _ in session.stream(prompt, max_tokens=spec["decode_tokens"]):
            last = time.perf_counter()
            if first is None:
                first = last
                at_first = session.stats()
            count += 1
        stats = session.stats()
    if first is None or last is None:
        raise RuntimeError("the session generated no token")
    decoded = count - 1
    decode_bytes = stats["bytes_read"] - at_first["bytes_read"]
    return {
        "load_s": load_s,
        "ttft_s": first - start,
        "prefill_tps": spec["prompt_tokens"] / (first - start),
        "decode_tps": decoded / (last - first) if decoded > 0 and last > first else None,
        "generated_tokens": count,
        "capacity": list(session.handle.capacity),
        "hit_rate": stats["hit_rate"],
        "bytes_read": stats["bytes_read"],
        "decode_mb_per_token": decode_bytes / decoded / 1e6 if decoded > 0 else None,
        "miss_service_mb_s": stats["read_mb_per_s"],
        "peak_memory": stats["peak_memory"],
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = {"ok": True, **run(spec)}
    except Exception as e:  # the parent reports why a run failed and goes on
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print("BENCH-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
