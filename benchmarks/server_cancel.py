"""How soon a client that leaves during a long prompt's prefill frees the server's worker.

    uv run python benchmarks/server_cancel.py [--layers 2] [--experts 16] [--hidden 256]
        [--precision f32] [--prompt 6000] [--capacity 4] [--json PATH]

Builds a random qwen3_moe checkpoint (moe-testing) with its positions raised so one prompt spans
several prefill chunks of 2,048 tokens (mlx-lm's chunk, which the session keeps so its output
stays mlx-lm's), serves it with `create_app` on a real offloaded `Session`, and for several
moments during the prefill opens a streaming request with a fresh prompt, closes the connection
at that moment and times how long until the worker is free. The session checks for cancellation
between chunks, so the wait is at most one chunk; before, the worker finished the prefill (the
last column: what was left of it when the client left).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from moe_runtime import Session
from moe_server import create_app
from moe_testing import CheckpointSpec, build_checkpoint

CHUNK = 2048


def _prompt(session: Session, tokens: int, seed: int) -> list[dict]:
    """A user message of about `tokens` tokens no earlier prompt shares a prefix with."""
    words, n = [f"s{seed}"], seed * 100_000
    while len(session.encode_prompt([{"role": "user", "content": " ".join(words)}])) < tokens:
        words.extend(str(n + i) for i in range(200))
        n += 200
    return [{"role": "user", "content": " ".join(words)}]


class _ChunkWatch:
    """When each prefill chunk ended: the prompt cache grows by a chunk at a time."""

    def __init__(self, session: Session):
        self.session, self.times, self._done = session, [], threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        seen = len(self.session._cache.tokens)
        while not self._done.is_set():
            now = len(self.session._cache.tokens)
            if now > seen:
                self.times.append(time.perf_counter())
            seen = now
            time.sleep(0.002)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def serve_in_thread(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve `app` on a free loopback port from a thread; (server, thread, base url)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    # float32: MLX's CPU kernels with 4-bit weights and bf16 scales are ~5x slower here
    parser.add_argument("--precision", default="f32", choices=["f32", "q4", "q8"])
    parser.add_argument("--prompt", type=int, default=6000, help="prompt tokens")
    parser.add_argument("--capacity", type=int, default=4, help="expert slots per layer")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/server_cancel.json"))
    args = parser.parse_args()
    load = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        spec = CheckpointSpec(
            "qwen3_moe",
            precision=args.precision,
            num_layers=args.layers,
            num_experts=args.experts,
            hidden_size=args.hidden,
            top_k=4,
        )
        path = build_checkpoint(spec, Path(tmp))
        config = json.loads((path / "config.json").read_text())
        config["max_position_embeddings"] = 4 * args.prompt  # room for the long prompts
        (path / "config.json").write_text(json.dumps(config))
        session = Session(path, capacity=args.capacity, cache_dir=Path(tmp) / "cache")
        try:
            # One whole prefill, timed, for the chunk's time.
            prompt = _prompt(session, args.prompt, seed=0)
            tokens = len(session.encode_prompt(prompt))
            started = time.perf_counter()
            first = session.stream(prompt, max_tokens=1)
            next(first)
            full_s = time.perf_counter() - started
            first.close()  # here, on the thread that ran it (MLX streams belong to a thread)
            chunks = -(-(tokens - 1) // CHUNK)
            app = create_app(session)
            server, thread, url = serve_in_thread(app)
            worker = app.state.engine.worker
            trials = []
            for i, share in enumerate((0.15, 0.35, 0.55, 0.75), start=1):
                body = {"model": "m", "messages": _prompt(session, args.prompt, seed=i),
                        "max_tokens": 200, "stream": True}  # fmt: skip
                chunk_ends = _ChunkWatch(session)
                with httpx.stream(
                    "POST", url + "/v1/chat/completions", json=body, timeout=600
                ) as r:
                    lines = r.iter_lines()
                    next(lines)  # the stream is open; the prefill runs
                    time.sleep(share * full_s)
                left = time.perf_counter()
                while worker.running or worker.waiting:
                    time.sleep(0.005)
                freed = time.perf_counter() - left
                chunk_ends.stop()
                # When the chunk that was computing as the client left ended.
                boundary = next((t - left for t in chunk_ends.times if t >= left), None)
                done = sum(t < left for t in chunk_ends.times)
                trials.append(
                    {
                        # Left during the prefill, or once it was over (then a token ends it).
                        "phase": "prefill" if done < chunks else "decode",
                        "left_after_s": round(share * full_s, 3),
                        "chunks_done_when_left": min(done, chunks),
                        "chunk_ended_after_s": None if boundary is None else round(boundary, 3),
                        "freed_after_s": round(freed, 3),
                        "prefill_left_s": round((1 - share) * full_s, 3),
                    }
                )
                print(trials[-1])
            server.should_exit = True
            thread.join(30)
        finally:
            session.close()
    result = {
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, shared "
        f"(load average {load:.1f} at the start)",
        "command": "uv run python benchmarks/server_cancel.py "
        f"--layers {args.layers} --experts {args.experts} --hidden {args.hidden} "
        f"--precision {args.precision} --prompt {args.prompt} --capacity {args.capacity}",
        "prompt_tokens": tokens,
        "chunk_tokens": CHUNK,
        "chunks": chunks,
        "full_prefill_s": round(full_s, 3),
        "chunk_s": round(full_s / chunks, 3),
        "trials": trials,
        "max_freed_after_s": max(t["freed_after_s"] for t in trials),
        # How long the worker stayed busy after the chunk running when the client left ended.
        "max_after_chunk_end_s": max(
            round(t["freed_after_s"] - t["chunk_ended_after_s"], 3)
            for t in trials
            if t["phase"] == "prefill"
        ),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
