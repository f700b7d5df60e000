"""A conversation's second turn with and without prompt caches: time to first token when turn 2
is prefilled whole (no cache), from the cache in memory (same process), and from the disk after
a restart (turn 1 in one process, turn 2 in a fresh one); writes JSON.

    uv run python benchmarks/prompt_cache.py --out benchmarks/results/prompt_cache.json

For an attention model (qwen3_moe) and a hybrid one (qwen3_next, whose linear-attention state is
snapshotted where turn 1's messages end), built with moe-testing (random weights, q4). Every run
is a fresh process; modes alternate so a noisy machine affects them alike; medians are reported
with every run's figures. Turn 2's greedy tokens must be the same in every mode.
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

MODES = ("none", "memory", "restart")
SIZES = dict(num_layers=4, num_experts=16, top_k=4, head_dim=32,
             config_overrides={"max_position_embeddings": 16384})  # fmt: skip
STORY = "the keeper of the lighthouse counted the ships that passed in the night and wrote "


def turns(words: int) -> tuple[list[dict], str]:
    first = [{"role": "user", "content": (STORY * (words // 16 + 1))[: words * 6]}]
    return first, "now tell me what the keeper wrote about the third ship"


def child(args) -> None:
    import mlx.core as mx

    from moe_runtime import Session

    first, follow = turns(args.words)
    options = dict(capacity=args.capacity, cache_dir=args.work / "warm", warm_start=False)
    if args.mode == "none":
        options["prefix_cache"] = False
    if args.mode == "restart":
        options["prompt_cache_dir"] = args.work / "prompts"
    out: dict = {}

    def turn(session, messages, max_tokens):
        tic = time.perf_counter()
        responses = []
        for r in session.stream(messages, max_tokens=max_tokens):
            if not responses:
                out_ttft = time.perf_counter() - tic
            responses.append(r)
        total = time.perf_counter() - tic  # with the disk write after the last token
        return responses, out_ttft, total

    if args.phase in ("both", "first"):
        with Session(args.model, **options) as s:
            responses, ttft, total = turn(s, first, args.max_tokens)
            out["turn1"] = {"prompt_tokens": responses[0].prompt_tokens, "ttft_s": ttft,
                            "total_s": total}  # fmt: skip
            answer = s.tokenizer.decode([r.token for r in responses])
            (args.work / "answer.txt").write_text(answer)
            if args.phase == "both":
                second(s, first, answer, follow, out, turn)
        if args.mode == "restart":
            files = list((args.work / "prompts").glob("*/*.safetensors"))
            out["disk_files"] = len(files)
            out["disk_bytes"] = sum(f.stat().st_size for f in files)
    else:
        tic = time.perf_counter()
        with Session(args.model, **options) as s:
            out["load_s"] = time.perf_counter() - tic
            answer = (args.work / "answer.txt").read_text()
            second(s, first, answer, follow, out, turn)
    out["peak_memory"] = mx.get_peak_memory()
    print(json.dumps(out))


def second(session, first, answer, follow, out, turn) -> None:
    messages = [*first, {"role": "assistant", "content": answer},
                {"role": "user", "content": follow}]  # fmt: skip
    responses, ttft, _ = turn(session, messages, 8)
    out["turn2"] = {
        "prompt_tokens": responses[0].prompt_tokens,
        "cached_tokens": responses[0].cached_tokens,
        "ttft_s": ttft,
        "tokens": [r.token for r in responses],
        "counts": session.stats()["session"]["prefix_cache"],
    }


def run_child(args, model: Path, mode: str, phase: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", str(model), "--mode", mode,
           "--phase", phase, "--work", str(work), "--words", str(args.words),
           "--capacity", str(args.capacity), "--max-tokens", str(args.max_tokens)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def one_run(args, model: Path, mode: str, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if mode != "restart":
        return run_child(args, model, mode, "both", work)
    first = run_child(args, model, mode, "first", work)
    return {**first, **run_child(args, model, mode, "second", work)}


def measure(args, family: str, root: Path) -> dict:
    from moe_testing import CheckpointSpec, build_checkpoint

    model = build_checkpoint(CheckpointSpec(family, **SIZES), root / "models")
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.runs):
        for mode in MODES:
            runs[mode].append(one_run(args, model, mode, root / "work" / family / mode))
    tokens = {m: [r["turn2"]["tokens"] for r in runs[m]] for m in MODES}
    summary = {}
    for mode in MODES:
        rs = runs[mode]
        summary[mode] = {
            "turn2_ttft_s": statistics.median(r["turn2"]["ttft_s"] for r in rs),
            "turn2_prompt_tokens": rs[0]["turn2"]["prompt_tokens"],
            "turn2_cached_tokens": rs[0]["turn2"]["cached_tokens"],
            "turn2_counts": rs[0]["turn2"]["counts"],
            "turn1_total_s": statistics.median(r["turn1"]["total_s"] for r in rs),
            "runs_turn2_ttft_s": [round(r["turn2"]["ttft_s"], 4) for r in rs],
        }
        if mode == "restart":
            summary[mode]["disk_files"] = rs[0]["disk_files"]
            summary[mode]["disk_bytes"] = rs[0]["disk_bytes"]
            summary[mode]["load_s"] = statistics.median(r["load_s"] for r in rs)
    none = summary["none"]["turn2_ttft_s"]
    return {
        "family": family,
        "checkpoint": SIZES,
        "turn1_prompt_tokens": runs["none"][0]["turn1"]["prompt_tokens"],
        "modes": summary,
        "speedup_memory": none / summary["memory"]["turn2_ttft_s"],
        "speedup_restart": none / summary["restart"]["turn2_ttft_s"],
        "same_tokens_in_every_mode": all(t == tokens["none"][0] for m in MODES for t in tokens[m]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="qwen3_moe,qwen3_next")
    p.add_argument("--words", type=int, default=400, help="length of turn 1's message")
    p.add_argument("--capacity", type=int, default=16, help="slots per layer (of 16 experts)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-out/prompt_cache.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("both", "first", "second"), help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    root = Path(tempfile.mkdtemp(prefix="moe-prompt-cache-"))
    load = [os.getloadavg()[0]]  # a shared machine: how busy it was
    try:
        results = [measure(args, f, root) for f in args.families.split(",")]
        load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import mlx.core as mx

    result = {
        "benchmark": "prompt_cache",
        "machine": f"{platform.machine()} {platform.system()}, {_cpus()} cores, "
        f"{_ram_gib():.0f} GiB RAM, {mx.default_device()}",
        "command": "uv run python benchmarks/prompt_cache.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1min": {"start": load[0], "end": load[-1]},
        "settings": dict(
            words=args.words, capacity=args.capacity, max_tokens=args.max_tokens, runs=args.runs
        ),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


if __name__ == "__main__":
    main()
