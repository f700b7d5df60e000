"""What the live page costs the generation: decode tok/s of `moe serve` on the demo model with the
page closed, with its event stream read (what an open page asks of the server), and with the page
open in headless chromium, in rounds that rotate the order.

    uv run python benchmarks/live_page_overhead.py [--rounds 3] [--requests 3] [--max-tokens 120]

The server is the real CLI (`moe serve --capacity 16`: 16 of the demo model's 64 experts per layer
stay in memory, so decoding reads experts and the heatmap moves). Decode tok/s is measured by the
client: (completion tokens - 1) / (time of the last chunk of text, reasoning or tool call - time
of the first), for --requests greedy requests (the end tokens banned by logit_bias, so each runs
to --max-tokens) of --max-tokens tokens per condition and round; each round runs the
conditions in another order, and each condition is compared with the closed page of its own round. Since other work on a shared machine
moves wall-clock rates a lot, the server process's own CPU time per generated token (user +
system, from /proc, prefill included) is recorded too: it counts what the page makes the server
do and little of what the neighbours do. `frames` counts the events the
stream reader got during the request (for the page: heatmap updates), and
`worker_sampling_share` is the share of the request's time the worker spent taking samples, as
the server reports it (its mean over requests, and `worker_sampling_share_overall`: all the
sampling time over all the requests' time). Also timed in this process: one
worker-side sample (provider.stats() plus the resident and pinned sets) on the demo model, and the
residency grid alone for 48 layers x 512 experts. Writes benchmarks/results/live_page_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _live_page import Serve, chromium, missing_browser, wait_until  # noqa: E402

PROMPT = "def main():"


def never_end() -> dict:
    """A logit_bias that keeps the demo model from ending its answer, so that every request runs
    to max_tokens (the retrained model thinks, then ends after a few dozen tokens)."""
    from moe_runtime import demo_model_path

    config = json.loads((demo_model_path() / "generation_config.json").read_text())
    ends = config["eos_token_id"]
    return {str(t): -100 for t in (ends if isinstance(ends, list) else [ends])}


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_tok_s(url: str, max_tokens: int) -> dict:
    body = {
        "model": "moe-demo",
        "stream": True,
        "max_tokens": max_tokens,
        "logit_bias": never_end(),
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": PROMPT}],
    }
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            delta = (chunk.get("choices") or [{}])[0].get("delta", {})
            # Thinking and tool calls are generated tokens too, sent as deltas of their own.
            if any(delta.get(k) for k in ("content", "reasoning_content", "tool_calls")):
                last = time.perf_counter()
                first = first or last
    return {"tokens": tokens, "tok_s": (tokens - 1) / (last - first)}


class StreamReader:
    """Reads /live/events as an open page would, counting the frames and keeping the worker's
    time spent sampling that they report."""

    def __init__(self, url: str):
        self.frames = 0
        self.sampling_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        wait_until(lambda: self.frames > 0, what="the hello event")

    def _read(self, url: str) -> None:
        with httpx.stream("GET", url + "/live/events", timeout=600) as response:
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    self.frames += 1
                    self.sampling_s = json.loads(line[6:]).get("sampling_s", self.sampling_s)

    def close(self) -> None:
        self._stop.set()


class OpenPage:
    def __init__(self, url: str):
        self.driver = chromium()
        self.driver.get(url + "/")
        wait_until(
            lambda: (
                self.driver.execute_script("return document.getElementById('status').dataset.state")
                == "live"
            ),
            what="the page to connect",
        )

    @property
    def frames(self) -> int:
        return int(
            self.driver.execute_script("return document.getElementById('heatmap').dataset.frames")
        )

    def close(self) -> None:
        self.driver.quit()


def sample_costs(repeats: int = 50) -> dict:
    """Seconds per worker-side sample on the demo model, and per residency grid at 48 x 512."""
    from moe_runtime import Session
    from moe_server._live import Sampler, residency

    with Session(None, capacity=16, warm_start=False) as session:
        session.generate(PROMPT, max_tokens=16)
        sampler = Sampler(session)
        start = time.perf_counter()
        for _ in range(repeats):
            sampler.sample()
        demo = (time.perf_counter() - start) / repeats

    layers, experts, slots = 48, 512, 128
    ids = [set(range(i, experts, experts // slots)) for i in range(layers)]
    handle = SimpleNamespace(
        num_experts=[experts] * layers,
        resident=lambda: [set(s) for s in ids],
        pinned=lambda: [set(list(s)[:8]) for s in ids],
    )
    fake = SimpleNamespace(handle=handle)
    start = time.perf_counter()
    for _ in range(repeats):
        residency(fake)
    grid = (time.perf_counter() - start) / repeats
    return {"sample_demo_s": demo, "residency_48x512_s": grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3, help="per condition and round")
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "live_page_overhead.json"
    )
    args = parser.parse_args()

    conditions = ["closed", "event stream", "page in chromium"]
    if missing_browser() is not None:
        print(f"no browser: {missing_browser()}; measuring without it", file=sys.stderr)
        conditions.remove("page in chromium")
    serve = Serve("--capacity", str(args.capacity), "--max-tokens", str(args.max_tokens))
    runs = []
    try:
        decode_tok_s(serve.url, 16)  # first compile and first reads
        for round_ in range(args.rounds):
            shift = round_ % len(conditions)
            for condition in conditions[shift:] + conditions[:shift]:
                watcher = None
                if condition == "event stream":
                    watcher = StreamReader(serve.url)
                elif condition == "page in chromium":
                    watcher = OpenPage(serve.url)
                for _ in range(args.requests):
                    frames_before = watcher.frames if watcher else 0
                    sampled_before = watcher.sampling_s if isinstance(watcher, StreamReader) else 0
                    start, cpu = time.perf_counter(), cpu_seconds(serve.proc.pid)
                    result = decode_tok_s(serve.url, args.max_tokens)
                    elapsed = time.perf_counter() - start
                    result["server_cpu_ms_per_token"] = (
                        1000 * (cpu_seconds(serve.proc.pid) - cpu) / result["tokens"]
                    )
                    time.sleep(0.5)  # the frame of the job's end
                    result["frames"] = (watcher.frames - frames_before) if watcher else 0
                    if isinstance(watcher, StreamReader):
                        # with the one sample after the job, taken with no page open too
                        result["worker_sampling_s"] = watcher.sampling_s - sampled_before
                        result["elapsed_s"] = elapsed
                        result["worker_sampling_share"] = result["worker_sampling_s"] / elapsed
                    runs.append({"round": round_ + 1, "condition": condition, **result})
                    print(f"round {round_ + 1} {condition:17s} {result}", file=sys.stderr)
                if watcher:
                    watcher.close()
    finally:
        serve.stop()

    def per_round(condition: str, key: str) -> list[float]:
        """The median of `key` over a condition's requests, round by round."""
        return [
            statistics.median(
                r[key] for r in runs if r["condition"] == condition and r["round"] == n
            )
            for n in range(1, args.rounds + 1)
        ]

    summary = {}
    closed_tok_s = per_round("closed", "tok_s")
    closed_cpu = per_round("closed", "server_cpu_ms_per_token")
    for condition in conditions:
        tok_s = per_round(condition, "tok_s")
        cpu = per_round(condition, "server_cpu_ms_per_token")
        entry = {
            "tok_s_per_round": tok_s,
            "mean_tok_s": statistics.mean(tok_s),
            "server_cpu_ms_per_token_per_round": cpu,
            "mean_server_cpu_ms_per_token": statistics.mean(cpu),
        }
        if condition != "closed":
            entry["tok_s_vs_closed_per_round"] = [
                a / b for a, b in zip(tok_s, closed_tok_s, strict=True)
            ]
            entry["server_cpu_vs_closed_per_round"] = [
                a / b for a, b in zip(cpu, closed_cpu, strict=True)
            ]
        if condition == "event stream":
            streamed = [r for r in runs if r["condition"] == condition]
            entry["worker_sampling_share"] = statistics.mean(
                r["worker_sampling_share"] for r in streamed
            )
            # The budget holds over the worker's time, not request by request: a sample owed
            # by one request may be taken during the next.
            entry["worker_sampling_share_overall"] = sum(
                r["worker_sampling_s"] for r in streamed
            ) / sum(r["elapsed_s"] for r in streamed)
        summary[condition] = entry
    doc = {
        "benchmark": "live_page_overhead",
        "command": "uv run python benchmarks/live_page_overhead.py "
        f"--rounds {args.rounds} --requests {args.requests} --max-tokens {args.max_tokens} "
        f"--capacity {args.capacity}",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
        "model": "moe-demo (shipped with moe-runtime), greedy",
        "server": f"moe serve --capacity {args.capacity} (of 64 experts per layer)",
        "prompt": PROMPT,
        "runs": runs,
        "summary": summary,
        "sample_costs": sample_costs(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["summary"], indent=2))
    print(json.dumps(doc["sample_costs"], indent=2))


if __name__ == "__main__":
    main()
