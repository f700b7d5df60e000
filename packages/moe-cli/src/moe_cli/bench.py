"""`moe bench [MODEL]`: how fast moe runs a model on this machine. The disk's expert read speed
(the probe `inspect` uses, one and several readers), then one run per capacity, each in a fresh
process started with the checkpoint's page cache dropped: time to first token, prefill and decode
speed, hit rate, bytes read per decoded token, miss service speed and peak memory. Nothing is
installed; the comparison with other tools is benchmarks/bench.py in the repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import MemoryOpt, ModelArg, err_console, fail, parse_memory, user_errors


def bench(
    model: ModelArg = None,
    capacities: Annotated[
        str,
        typer.Option(
            "--capacities", help="Fractions of each layer's experts kept, comma-separated."
        ),
    ] = "1.0,0.5,0.25",
    memory: MemoryOpt = None,
    prompt: Annotated[int, typer.Option("--prompt", min=1, help="Prompt length in tokens.")] = 256,
    decode: Annotated[int, typer.Option("--decode", min=2, help="Tokens decoded per run.")] = 32,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the results (JSON) here.", show_default=False),
    ] = None,
) -> None:
    """Measure moe on this machine: disk reads, then speed and memory at each capacity."""
    with user_errors():
        fractions = _fractions(capacities)
        memory_bytes = parse_memory(memory)
        import moe_core
        from moe_runtime import load_checked, resolve_model

        from ._disk import evict, measure_disk

        model_id, path = resolve_model(model)
        lazy, _, _ = load_checked(path, tokenizer=False)
        geometry = moe_core.describe(lazy, path)
        banks = list(geometry.banks)
        files = sorted(p for p in path.iterdir() if p.is_file())
        err_console.print("measuring the disk ...")
        disk = {
            "random_1_thread_mb_s": measure_disk(banks, 1.0),
            "random_4_threads_mb_s": measure_disk(banks, 1.0, threads=4),
            "expert_bytes": geometry.expert_bytes[0],
        }
        runs = (
            [{"memory": memory_bytes}]
            if memory_bytes is not None
            else [{"capacity": max(1, round(f * max(geometry.num_experts)))} for f in fractions]
        )
        results = []
        for options in runs:
            evict(files)
            spec = {"model": str(path), "prompt_tokens": prompt, "decode_tokens": decode}
            result = _run_child({**spec, **options})
            result["asked"] = options
            results.append(result)
            err_console.print(_line(result), markup=False)
    doc = {
        "model": model_id,
        "experts_per_layer": max(geometry.num_experts),
        "prompt_tokens": prompt,
        "decode_tokens": decode,
        "disk": disk,
        "results": results,
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(doc, indent=1) + "\n")
    typer.echo(summary(doc))
    failed = [r for r in results if not r["ok"]]
    if failed:
        fail(f"{len(failed)} of {len(results)} runs failed: {failed[0]['error']}")


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--capacities: {text!r} is not a comma-separated list of numbers"
        ) from None
    if not values or not all(0 < v <= 1 for v in values):
        raise ValueError(f"--capacities: {text!r}: fractions in (0, 1], e.g. 1.0,0.5,0.25")
    return values


def _run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "moe_cli._bench_run", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": f"the run exited {out.returncode}: {tail}"}


def _line(r: dict) -> str:
    asked = r["asked"]
    where = (
        f"capacity {asked['capacity']}" if "capacity" in asked else f"--memory {asked['memory']} B"
    )
    if not r["ok"]:
        return f"{where}: failed ({r['error']})"
    return f"{where}: decode {r['decode_tps'] or 0:.2f} tok/s, first token {r['ttft_s']:.1f} s"


def summary(doc: dict) -> str:
    disk = doc["disk"]
    lines = [
        f"disk: {disk['random_1_thread_mb_s']:.0f} MB/s (1 reader), "
        f"{disk['random_4_threads_mb_s']:.0f} MB/s (4 readers), experts of "
        f"{disk['expert_bytes'] / 1e6:.2f} MB, cold",
        f"{'experts':>9} {'first s':>8} {'prefill':>8} {'decode':>8} {'hit':>6} "
        f"{'MB/token':>9} {'MB/s':>7} {'peak GB':>8}",
    ]
    for r in doc["results"]:
        if not r["ok"]:
            lines.append(f"{'-':>9} failed: {r['error']}")
            continue
        caps = sorted(set(r["capacity"]))
        experts = f"{caps[0]}/{doc['experts_per_layer']}" if len(caps) == 1 else "varies"

        def f(value, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines.append(
            f"{experts:>9} {r['ttft_s']:>8.1f} {r['prefill_tps']:>8.1f} "
            f"{f(r['decode_tps'], '8.2f')} {r['hit_rate']:>6.1%} "
            f"{f(r['decode_mb_per_token'], '9.2f')} {f(r['miss_service_mb_s'], '7.0f')} "
            f"{r['peak_memory'] / 1e9:>8.2f}"
        )
    lines.append("speeds in tokens/s; MB/token: read per decoded token; MB/s: miss service")
    return "\n".join(lines)
