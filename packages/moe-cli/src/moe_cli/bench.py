"""`moe bench`: moe against the unmodified mlx-lm model and BigRig on a bench checkpoint (or any
checkpoint), cold page cache and an equal memory cap per run, runs alternated; the figures and
every target ratio as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import err_console, user_errors


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of numbers") from None
    return values


def bench(
    model: Annotated[
        Path | None,
        typer.Argument(help="Checkpoint directory; a bench checkpoint is built when left out."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results (JSON) here.")
    ] = None,
    layers: Annotated[int, typer.Option("--layers", min=1, help="Bench checkpoint layers.")] = 6,
    capacities: Annotated[
        str, typer.Option("--capacities", help="Fractions of the experts kept, comma-separated.")
    ] = "1.0,0.5,0.25",
    prompts: Annotated[
        str, typer.Option("--prompts", help="Prompt lengths in tokens, comma-separated.")
    ] = "512,2048",
    decode: Annotated[int, typer.Option("--decode", min=2, help="Tokens decoded per run.")] = 32,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Rounds of runs.")] = 3,
    contenders: Annotated[
        str,
        typer.Option(
            "--contenders",
            help="Comma-separated: mlx, moe, moe-packed, moe-lookahead, bigrig.",
        ),
    ] = "mlx,moe,moe-packed,moe-lookahead,bigrig",
    cap: Annotated[
        bool, typer.Option("--cap/--no-cap", help="Equal cgroup memory cap per run (root).")
    ] = True,
    scales: Annotated[
        str, typer.Option("--scales", help="Bench checkpoint scales: float32 or bfloat16.")
    ] = "float32",
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Bench cache (checkpoints, BigRig venv).")
    ] = None,
) -> None:
    """Benchmark moe against mlx-lm and BigRig; print a summary, write JSON with --json."""
    with user_errors():
        from ._bench import BenchConfig, BenchSpec, run_bench

        kw = {"cache_dir": cache_dir} if cache_dir else {}
        cfg = BenchConfig(
            model=model,
            spec=BenchSpec(layers=layers, scales=scales),
            capacities=_floats(capacities, "--capacities"),
            prompts=tuple(int(p) for p in _floats(prompts, "--prompts")),
            decode_tokens=decode,
            repeats=repeats,
            contenders=tuple(c.strip() for c in contenders.split(",") if c.strip()),
            cap=cap,
            **kw,
        )
        if model is not None and not (model / "config.json").exists():
            raise FileNotFoundError(f"{model}: no config.json (not a checkpoint directory)")
        doc = run_bench(cfg, log=lambda m: err_console.print(m, markup=False))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=1, default=str))
    typer.echo(summary(doc))


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
