"""Headline run: the Qwen3-Coder-Next geometry, exact, under a memory budget, next to the
unmodified mlx-lm model fully resident on the same machine.

    python benchmarks/headline.py all --dir CKPT --memory 16GB --json results/headline.json

`all` builds the checkpoint (qwen3_next: 48 layers x 512 experts, top-10, shared expert, 4-bit,
~43 GB; moe-testing's bulk builder: expert bytes are random, everything else from mlx-lm's model
class), measures the disk,
then runs each contender in a fresh process with the page cache dropped: the unmodified model
(where it fits) and moe at the budget. Routing is made skewed like real models': every embedding
row shares one direction and each expert's router row gets `-scale * log(rank)` along it, so a few
experts win most tokens (calibrated so the top 20% take `--skew` of the first layer's routings); the
share measured over the run's trace is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace


def build(
    out: Path,
    *,
    layers: int,
    experts: int,
    skew: float,
    seed: int = 0,
    overrides: dict | None = None,
) -> Path:
    """Write the checkpoint with moe-testing's bulk builder (kept when it is already there);
    `skew` is the share of the first layer's routings the busiest 20% of experts should take."""
    from moe_testing import QWEN3_CODER_NEXT, BulkSpec, build_bulk_checkpoint

    # `overrides`: other config values, for a small dry run of a script on a CPU
    config = dict(
        QWEN3_CODER_NEXT, num_hidden_layers=layers, num_experts=experts, **(overrides or {})
    )
    return build_bulk_checkpoint(BulkSpec(config, skew=skew, seed=seed), out)


def drop_page_cache(model: Path) -> None:
    for path in model.glob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def disk(model: Path, seconds: float = 8.0) -> dict:
    """Sequential and expert-sized random read speed of the checkpoint's own files, cold."""
    import numpy as np

    drop_page_cache(model)
    shards = sorted(model.glob("*.safetensors"))
    buf = bytearray(64 << 20)
    start, done = time.perf_counter(), 0
    fd = os.open(shards[len(shards) // 2], os.O_RDONLY)
    while time.perf_counter() - start < seconds / 2:
        got = os.preadv(fd, [buf], done)
        if not got:
            break
        done += got
    sequential = done / (time.perf_counter() - start)
    os.close(fd)
    expert = 1_769_472  # one 4-bit expert of this geometry with its scales and biases
    small = bytearray(expert)
    rng = np.random.default_rng(1)
    start, done = time.perf_counter(), 0
    fds = [os.open(s, os.O_RDONLY) for s in shards]
    while time.perf_counter() - start < seconds / 2:
        i = int(rng.integers(len(fds)))
        size = os.fstat(fds[i]).st_size
        done += os.preadv(fds[i], [small], int(rng.integers(0, max(1, size - expert))) & ~4095)
    random_rate = done / (time.perf_counter() - start)
    for fd in fds:
        os.close(fd)
    return {"sequential_mb_s": sequential / 1e6, "expert_random_mb_s": random_rate / 1e6}


def run(
    model: Path,
    mode: str,
    memory: str | None,
    prompt_tokens: int,
    decode: int,
    capacity: int | None = None,
    profile: bool = False,
    mlx_limits: bool = True,
) -> dict:
    """One contender in this process: TTFT of a `prompt_tokens` prompt, then greedy decode.

    `capacity` (slots per layer) replaces the memory budget; `profile` adds the decode's busiest
    functions by own time, to see where a token's time goes; without `mlx_limits` the budget's
    capacity is used but MLX's memory limits stay at their defaults (for comparison).
    `footprint_gb` is the peak of MLX's active plus cached memory, sampled every 10 ms: what the
    process holds on the device, where `peak_memory_gb` counts live arrays only."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    from mlx_lm.utils import load_model

    import moe_core

    drop_page_cache(model)
    start = time.perf_counter()
    lazy = mode == "moe"
    m, _ = load_model(model, lazy=lazy)
    handle, counts = None, None
    if mode == "moe":
        if not capacity and not mlx_limits:
            geometry = moe_core.describe(m, model)
            capacity = moe_core.plan_budget(geometry, memory=moe_core.parse_size(memory)).capacity
        if capacity:
            handle = moe_core.offload(m, model, capacity=capacity)
        else:
            handle = moe_core.offload(m, model, memory=moe_core.parse_size(memory))
        mx.eval(m.parameters())
        num_experts = handle.num_experts[0]
        counts = np.zeros((len(handle.capacity), num_experts), dtype=np.int64)

        def on_step(layer, ids):
            np.add.at(counts[layer], ids.ravel(), 1)

        if handle.capacity[0] < num_experts:  # a fully resident run keeps its sync-free path
            handle.observe(SimpleNamespace(on_step=on_step))
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 100_000, size=prompt_tokens).tolist()
    tokens, ttft, t_first = [], None, None
    footprint = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.01):
            footprint[0] = max(footprint[0], mx.get_active_memory() + mx.get_cache_memory())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    steps = generate_step(mx.array(prompt), m, max_tokens=decode + 1, sampler=make_sampler(0.0))
    profiler = None
    for token, _ in steps:
        if ttft is None:
            ttft = time.perf_counter() - start
            t_first = time.perf_counter()
            if handle is not None:
                prefill_stats = handle.stats()
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
        tokens.append(int(token))
    decode_s = time.perf_counter() - t_first
    sampling.set()
    sampler.join()
    if profiler is not None:
        profiler.disable()
    result = {
        "mode": mode,
        "memory": memory,
        "load_s": load_s,
        "ttft_s": ttft,
        "prefill_tok_s": prompt_tokens / ttft,
        "decode_tok_s": (len(tokens) - 1) / decode_s,
        "tokens": tokens,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
        "footprint_gb": footprint[0] / 1e9,
        "backend": mx.default_device().type.name
        if hasattr(mx.default_device().type, "name")
        else str(mx.default_device()),
    }
    if profiler is not None:
        rows = pstats.Stats(profiler).stats.items()
        busiest = sorted(rows, key=lambda kv: -kv[1][2])[:15]
        result["decode_profile"] = [
            {
                "function": f"{Path(f).name}:{line}:{fn}",
                "calls": v[1],
                "own_s": v[2],
                "total_s": v[3],
            }
            for (f, line, fn), v in busiest
        ]
    if handle is not None:
        stats = handle.stats()
        decode_hits = stats["hits"] - prefill_stats["hits"]
        decode_misses = stats["misses"] - prefill_stats["misses"]
        share = np.sort(counts, axis=1)[:, ::-1]
        top = share[:, : max(1, counts.shape[1] // 5)].sum() / max(1, share.sum())
        result.update(
            capacity=handle.capacity[0],
            num_experts=handle.num_experts[0],
            hit_rate=stats["hit_rate"],
            decode_hit_rate=decode_hits / max(1, decode_hits + decode_misses),
            bytes_read_gb=stats["bytes_read"] / 1e9,
            decode_mb_read_per_token=(stats["bytes_read"] - prefill_stats["bytes_read"])
            / 1e6
            / max(1, decode),
            miss_service_mb_s=stats["read_mb_per_s"],
            read_seconds=stats["read_seconds"],
            top20_share=float(top) if counts.any() else None,
            budget_reason=stats["budget"]["reason"],
        )
        handle.close()
    return result


def machine() -> dict:
    import mlx.core as mx

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mlx": mx.__version__,
    }
    try:
        info["device_info"] = {
            k: v for k, v in mx.device_info().items() if isinstance(v, (int, float, str))
        }
    except Exception as e:
        info["device_info"] = str(e)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "all", "run"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, required=True)
        p.add_argument("--layers", type=int, default=48)
        p.add_argument("--experts", type=int, default=512)
        p.add_argument("--skew", type=float, default=0.65, help="top-20%% share")
        p.add_argument("--set", action="append", default=[], help="config KEY=INT (dry runs)")
        p.add_argument("--memory", default="16GB")
        p.add_argument("--capacity", type=int, help="slots per layer, instead of --memory")
        p.add_argument("--profile", action="store_true", help="profile the decode (run only)")
        p.add_argument(
            "--no-mlx-limits", action="store_true", help="the budget's capacity, MLX limits unset"
        )
        p.add_argument("--prompt", type=int, default=512)
        p.add_argument("--decode", type=int, default=32)
        p.add_argument("--mode", default="moe", choices=["moe", "mlx-lm"])
        p.add_argument("--skip-reference", action="store_true")
        p.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        start = time.perf_counter()
        overrides = {k: int(v) for k, v in (item.split("=", 1) for item in args.set)}
        build(
            args.dir, layers=args.layers, experts=args.experts, skew=args.skew, overrides=overrides
        )
        print(json.dumps({"build_s": time.perf_counter() - start}))
        return
    if args.command == "run":
        print(
            "RESULT "
            + json.dumps(
                run(
                    args.dir,
                    args.mode,
                    args.memory,
                    args.prompt,
                    args.decode,
                    args.capacity,
                    args.profile,
                    not args.no_mlx_limits,
                )
            )
        )
        return
    # Built in a process of its own: MLX's buffer cache in this one would hold GPU memory while
    # the contenders run.
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "build", "--dir", str(args.dir), "--layers",
                    str(args.layers), "--experts", str(args.experts), "--skew", str(args.skew)],
                   check=True)  # fmt: skip
    config = json.loads((args.dir / "config.json").read_text())
    report = {"machine": machine(), "build_s": time.perf_counter() - start, "geometry": config,
        "skew": args.skew,
        "checkpoint_gb": sum(p.stat().st_size for p in args.dir.glob("*.safetensors")) / 1e9}  # fmt: skip
    print(f"built {report['checkpoint_gb']:.1f} GB in {report['build_s']:.0f} s", flush=True)
    report["disk"] = disk(args.dir)
    print("disk", report["disk"], flush=True)
    modes = ["moe"] if args.skip_reference else ["moe", "mlx-lm"]
    for mode in modes:
        cmd = [sys.executable, __file__, "run", "--dir", str(args.dir), "--mode", mode,
               "--memory", args.memory, "--prompt", str(args.prompt), "--decode", str(args.decode),
               *(["--capacity", str(args.capacity)] if args.capacity else [])]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        report[mode] = json.loads(lines[-1][7:]) if lines else {"error": out.stderr[-3000:]}
        print(mode, json.dumps(report[mode])[:600], flush=True)
        if args.json:  # keep what is done, should a later contender not finish
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))
    ref, moe = report.get("mlx-lm", {}), report.get("moe", {})
    if "tokens" in ref and "tokens" in moe:
        report["identical_tokens"] = ref["tokens"] == moe["tokens"]
        report["decode_ratio"] = moe["decode_tok_s"] / ref["decode_tok_s"]
        report["ttft_ratio"] = moe["ttft_s"] / ref["ttft_s"]
    if "miss_service_mb_s" in moe:
        report["miss_service_vs_disk"] = (
            moe["miss_service_mb_s"] / report["disk"]["expert_random_mb_s"]
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("mlx-lm", "moe")}, indent=1))


if __name__ == "__main__":
    main()
