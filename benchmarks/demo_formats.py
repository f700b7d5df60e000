"""Stored formats for the demo model on this machine's CPU: size on disk, prefill and decode speed,
and what each costs in quality, to choose the format the demo model ships in.

    uv run python benchmarks/demo_formats.py --checkpoint CHECKPOINT_DIR [--tokens 2048] [--long 24576]

Each candidate is made with mlx-lm's own `convert` from the bfloat16 checkpoint training/train.py
writes (cast to a dtype, then quantized, or not). Without `--checkpoint` the candidates are made from
the shipped model dequantized to float32: the same shapes, so the same speed, but the quality column
then measures quantizing an already quantized model. Each measurement runs in a fresh process.
Prefill: mlx-lm's prompt-cache prefill in chunks of 2048 tokens (what `generate_step` does) of the
first N tokens of this project's own source, which the model never saw; decode: 64 greedy tokens
after it. Both in wall seconds and in the process's CPU seconds: the machine is shared, and CPU
seconds are the steadier figure. Quality: mean
next-token loss on 2 windows of 1024 tokens of the same text, and its difference from float32's.
Formats with float16 scales are too slow here for that: they are measured on 512 tokens (one
window). `--long N` adds one prefill of N tokens for the format the demo ships in. Each row is
written to benchmarks/results/demo_formats.json as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# name: (dtype, bits, group size); bits None: not quantized.
CANDIDATES = {
    "f32 q4 g64": ("float32", 4, 64),
    "f32 q8 g64": ("float32", 8, 64),
    "f32 q4 g32": ("float32", 4, 32),
    "f32": ("float32", None, None),
    "bf16 q4 g64": ("bfloat16", 4, 64),
    "f16 q4 g64": ("float16", 4, 64),
}
# Formats too slow here to measure on the full lengths (float16 scales): measured on 512 tokens.
SLOW = {"f16 q4 g64": 512}


def text_tokens(tokenizer, limit: int) -> list[int]:
    ids: list[int] = []
    for file in sorted(ROOT.glob("packages/*/src/**/*.py")):
        ids += [*tokenizer.encode(file.read_text()), tokenizer.pad_token_id or 0]
        if len(ids) >= limit:
            return ids[:limit]
    raise SystemExit(f"only {len(ids)} tokens of source here, {limit} asked")


def measure(path: str, lengths: list[int], loss_tokens: int) -> dict:
    """In a fresh process: prefill and decode speeds at each length, and the loss."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(path)
    out: dict = {"prefill": [], "loss": None}
    ids = text_tokens(tokenizer, max([*lengths, loss_tokens + 1]))
    nll, count = 0.0, 0
    window = min(1024, loss_tokens)
    for start in range(0, loss_tokens, window):
        x = mx.array([ids[start : start + window + 1]])
        logits = model(x[:, :-1]).astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = mx.take_along_axis(logprobs[0], x[0, 1:, None], axis=-1)
        nll -= picked.sum().item()
        count += window
    out["loss"] = nll / count
    for n in lengths:
        cache = make_prompt_cache(model)
        prompt = mx.array(ids[:n])
        wall, cpu = time.perf_counter(), time.process_time()
        steps = generate_step(
            prompt, model, prompt_cache=cache, max_tokens=65, sampler=make_sampler(0.0)
        )
        next(steps)  # prefill and the first token
        first_wall, first_cpu = time.perf_counter() - wall, time.process_time() - cpu
        for _ in steps:
            pass
        decode_wall = time.perf_counter() - wall - first_wall
        decode_cpu = time.process_time() - cpu - first_cpu
        out["prefill"].append(
            {
                "tokens": n,
                "wall_s": first_wall,
                "cpu_s": first_cpu,
                "tok_per_s": n / first_wall,
                "tok_per_cpu_s": n / first_cpu,
                "decode_tok_per_s": 64 / decode_wall,
                "decode_tok_per_cpu_s": 64 / decode_cpu,
            }
        )
    return out


def build(source: str, name: str, out: Path, dequantized: bool) -> None:
    from mlx_lm import convert

    dtype, bits, group = CANDIDATES[name]
    if bits is None:
        convert(hf_path=source, mlx_path=str(out), dtype=dtype, dequantize=dequantized)
    else:
        convert(
            hf_path=source,
            mlx_path=str(out),
            quantize=True,
            q_bits=bits,
            q_group_size=group,
            dtype=dtype,
        )


def scales_dtype(folder: Path) -> str | None:
    """The dtype of the stored quantization scales ("float32", ...), None when not quantized."""
    from safetensors import safe_open

    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if key.endswith(".scales"):
                    return names.get(f.get_slice(key).get_dtype(), "other")
    return None


def run_child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{args}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="training/train.py's output folder")
    parser.add_argument("--tokens", default="2048")
    parser.add_argument("--formats", default=",".join(CANDIDATES))
    parser.add_argument(
        "--long", type=int, default=0, help="one prefill of N tokens, shipped format"
    )
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        path, lengths, loss_tokens = args.measure
        print(json.dumps(measure(path, [int(n) for n in lengths.split(",")], int(loss_tokens))))
        return

    from moe_runtime import demo_model_path

    shipped = json.loads((demo_model_path() / "config.json").read_text())
    quant = shipped.get("quantization", {})
    shipped_dtype = scales_dtype(demo_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        source = str(args.checkpoint) if args.checkpoint else str(Path(tmp) / "dequantized")
        if not args.checkpoint:
            from mlx_lm import convert

            convert(
                hf_path=str(demo_model_path()), mlx_path=source, dequantize=True, dtype="float32"
            )
        rows = []
        for name in args.formats.split(","):
            folder = Path(tmp) / name.replace(" ", "-")
            build(source, name, folder, dequantized=False)
            size = sum(f.stat().st_size for f in folder.iterdir())
            tokens = str(SLOW[name]) if name in SLOW else args.tokens
            loss_tokens = SLOW.get(name, 2048)
            measured = run_child(["--measure", str(folder), tokens, str(loss_tokens)])
            dtype, bits, group = CANDIDATES[name]
            ships = (
                bits == quant.get("bits")
                and group == quant.get("group_size")
                and shipped_dtype == dtype
            )
            row = {
                "format": name,
                "ships": ships,
                "bytes_on_disk": size,
                "loss_tokens": loss_tokens,
                **measured,
            }
            if ships and args.long:
                long = run_child(["--measure", str(folder), str(args.long), "1024"])
                row["long"] = long["prefill"][0]
            rows.append(row)
            shutil.rmtree(folder)
            print(
                json.dumps({k: row[k] for k in ("format", "bytes_on_disk", "loss")}),
                [round(p["tok_per_cpu_s"], 1) for p in row["prefill"]],
                flush=True,
            )
            write(args, rows)


def write(args, rows: list[dict]) -> None:
    """The results so far: a slow format's row comes last, and the file stands without it."""
    reference = next((r["loss"] for r in rows if r["format"] == "f32"), None)
    for row in rows:
        same_text = reference is not None and row["loss_tokens"] == 2048
        row["loss_vs_f32"] = row["loss"] - reference if same_text else None
    result = {
        "benchmark": "demo_formats",
        "source": "trained checkpoint" if args.checkpoint else "shipped model, dequantized",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, MLX CPU backend",
        "text": "this project's source (packages/*/src), never trained on",
        "formats": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_formats.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
