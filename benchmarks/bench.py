"""The competitor benchmark: moe against the unmodified mlx-lm model and BigRig 0.9.1 on a bench
checkpoint (or any checkpoint), cold page cache and an equal memory cap per run, runs alternated;
the figures and every target ratio as JSON (see benchmarks/README.md). It installs BigRig into a
venv of its own under the bench cache, which is why it lives here and not in the `moe` command
(`moe bench` measures a user's own machine and model and installs nothing).

    python benchmarks/bench.py --layers 6 --json benchmarks/results/bench-6l.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import BenchConfig, BenchSpec, run_bench  # benchmarks/harness, beside this script


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"{name}: {text!r} is not a comma-separated list of numbers") from None


def summary(doc: dict) -> str:
    lines = [f"{'contender':<26} {'cap':>5} {'prompt':>6} {'decode':>8} {'prefill':>8} "
             f"{'ttft s':>7} {'hit':>6} {'MB/s':>7} {'peak GB':>8}"]  # fmt: skip
    for r in doc["results"]:

        def f(key, fmt, r=r):
            return format(r[key], fmt) if r.get(key) is not None else "-"

        lines.append(
            f"{r['contender']:<26} {r['capacity_fraction']:>5.0%} {r['prompt_tokens']:>6} "
            f"{f('decode_tps', '8.2f')} {f('prefill_tps', '8.1f')} {f('ttft_s', '7.1f')} "
            f"{f('hit_rate', '6.1%')} {f('miss_service_mb_s', '7.0f')} "
            f"{(r['peak_memory'] or 0) / 1e9:>8.2f}"
        )
    for name, rows in doc["targets"].items():
        met = sum(1 for r in rows if r["met"])
        lines.append(f"target {name}: {met}/{len(rows)} met")
    return "\n".join(lines)


def config(args) -> BenchConfig:
    return BenchConfig(
        model=args.model,
        spec=BenchSpec(layers=args.layers, scales=args.scales),
        capacities=_floats(args.capacities, "--capacities"),
        prompts=tuple(int(v) for v in _floats(args.prompts, "--prompts")),
        decode_tokens=args.decode,
        repeats=args.repeats,
        contenders=tuple(c.strip() for c in args.contenders.split(",") if c.strip()),
        cap=not args.no_cap,
        **({"cache_dir": args.cache_dir} if args.cache_dir else {}),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", type=Path, help="checkpoint (default: build a bench one)")
    p.add_argument("--json", type=Path, help="write the results (JSON) here")
    p.add_argument("--layers", type=int, default=6, help="bench checkpoint layers")
    p.add_argument("--capacities", default="1.0,0.5,0.25", help="fractions of experts kept")
    p.add_argument("--prompts", default="512,2048", help="prompt lengths in tokens")
    p.add_argument("--decode", type=int, default=32, help="tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3, help="rounds of runs")
    p.add_argument("--contenders", default="mlx,moe,moe-packed,moe-lookahead,bigrig")
    p.add_argument("--no-cap", action="store_true", help="no equal cgroup memory cap per run")
    p.add_argument("--scales", default="float32", help="bench checkpoint scales")
    p.add_argument("--cache-dir", type=Path, help="bench cache (checkpoints, BigRig venv)")
    args = p.parse_args()
    if args.model is not None and not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: no config.json (not a checkpoint directory)")
    try:
        cfg = config(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    doc = run_bench(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    print(summary(doc))


if __name__ == "__main__":
    main()
