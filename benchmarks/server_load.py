"""Load on `moe serve`: 16 concurrent streaming clients against a fixture model.

    uv run python benchmarks/server_load.py [--model DIR] [--capacity 4] [--clients 16] [--requests 4]

Without --model it builds the server tests' tiny random qwen3_moe checkpoint. The provider is a
real `moe_runtime.Session` with its experts offloaded (--capacity slots per layer, fewer than the
layer's experts), so every figure includes expert reads, the prefix cache and the worker thread.
Writes benchmarks/results/server_load.json: requests per minute and p50/p95 time to first token.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "moe-server" / "tests"))
from _fixture_model import CAPACITY, NUM_EXPERTS, NUM_LAYERS, TOP_K  # noqa: E402
from server_cancel import serve_in_thread  # noqa: E402

from moe_runtime import Session  # noqa: E402
from moe_server import create_app  # noqa: E402
from moe_testing import CheckpointSpec, build_checkpoint  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_request(url: str, i: int, max_tokens: int) -> dict:
    body = {
        "model": "bench",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"Request {i}: tell me about experts."}],
    }
    start = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        if response.status_code != 200:
            return {"status": response.status_code}
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - start
    return {"status": 200, "ttft_s": first, "total_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--capacity", type=int, default=CAPACITY, help="expert slots per layer")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "server_load.json"
    )
    args = parser.parse_args()

    model = args.model
    if model is None:
        # The server tests' model (moe-testing's tiny qwen3_moe checkpoint).
        spec = CheckpointSpec(
            "qwen3_moe", num_layers=NUM_LAYERS, num_experts=NUM_EXPERTS, top_k=TOP_K
        )
        model = build_checkpoint(spec, tempfile.mkdtemp())
    session = Session(model, capacity=args.capacity, warm_start=False)
    app = create_app(session, max_queue=args.clients)
    server, thread, url = serve_in_thread(app)
    one_request(url, -1, 4)  # warm-up: first-call compilation is not load

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        results = list(
            pool.map(
                lambda i: one_request(url, i, args.max_tokens), range(args.clients * args.requests)
            )
        )
    elapsed = time.perf_counter() - started
    health = httpx.get(url + "/health").json()
    server.should_exit = True
    thread.join(10)
    stats = session.stats()
    session.close()

    ok = [r for r in results if r["status"] == 200]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    report = {
        "benchmark": "server_load",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "model": "tiny random qwen3_moe fixture (2 layers, 8 experts, q4)"
        if args.model is None
        else str(args.model.name),
        "provider": "moe_runtime.Session, experts offloaded",
        "capacity": session.handle.capacity,
        "num_experts": session.handle.num_experts,
        "expert_hit_rate": round(stats["hit_rate"], 4),
        "expert_misses": stats["misses"],
        "clients": args.clients,
        "requests": len(results),
        "max_tokens": args.max_tokens,
        "answered": len(ok),
        "refused": len(results) - len(ok),
        "elapsed_s": round(elapsed, 3),
        "requests_per_minute": round(len(ok) / elapsed * 60, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 4),
        "ttft_p95_s": round(_percentile(ttfts, 0.95), 4),
        "latency_p50_s": round(statistics.median(r["total_s"] for r in ok), 4),
        "healthy_after": health["status"] == "ok" and health["queue_depth"] == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
