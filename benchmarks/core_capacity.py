"""Decode speed and bytes read per token of an offloaded model at 100/50/25% capacity, next to the
unmodified mlx-lm model, on one synthetic fixture. Contenders alternate, each in a fresh process.

    python benchmarks/core_capacity.py --json results/core_capacity.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load_model
import moe_core

path, capacity, prompt_len, decode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = load_model(path, lazy=capacity > 0)
handle = moe_core.offload(model, path, capacity=capacity) if capacity > 0 else None
mx.eval(model.parameters())
prompt = mx.array([(i * 7919) % 500 + 3 for i in range(prompt_len)])
steps = generate_step(prompt, model, max_tokens=decode + 1, sampler=make_sampler(0.0))
start = time.perf_counter()
tokens, first, before = [], None, None
for token, _ in steps:
    tokens.append(int(token))
    if first is None:
        first = time.perf_counter()
        before = handle.stats() if handle else None
end = time.perf_counter()
out = {"ttft_s": first - start, "decode_tok_s": decode / (end - first), "tokens": tokens}
if handle:
    after = handle.stats()
    out.update(hit_rate=after["hit_rate"],
               decode_bytes_per_token=(after["bytes_read"] - before["bytes_read"]) / decode,
               decode_misses_per_token=(after["misses"] - before["misses"]) / decode)
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode", type=int, default=48)
    parser.add_argument("--prompt", type=int, default=64)
    args = parser.parse_args()
    from moe_testing import CheckpointSpec, build_checkpoint

    spec = CheckpointSpec("qwen3_moe", precision="q4", skew=1.0, num_layers=8, hidden_size=512,
                          moe_intermediate_size=512, num_experts=64, top_k=8)  # fmt: skip
    path = build_checkpoint(spec, Path(tempfile.mkdtemp()))
    contenders = {"mlx-lm": 0, "moe 100%": 64, "moe 50%": 32, "moe 25%": 16}
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, capacity in contenders.items():
            cmd = [
                sys.executable,
                "-c",
                CHILD,
                str(path),
                str(capacity),
                str(args.prompt),
                str(args.decode),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    summary = {}
    ref = sorted(r["decode_tok_s"] for r in runs["mlx-lm"])[args.rounds // 2]
    for name, results in runs.items():
        best = sorted(results, key=lambda r: r["decode_tok_s"])[args.rounds // 2]
        entry = {k: v for k, v in best.items() if k != "tokens"}
        entry["decode_vs_mlx_lm"] = best["decode_tok_s"] / ref
        entry["tokens_identical"] = all(r["tokens"] == runs["mlx-lm"][0]["tokens"] for r in results)
        summary[name] = entry
        print(f"{name:10s} {json.dumps(entry)}")
    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "date": time.strftime("%Y-%m-%d")},
              "checkpoint": spec.__repr__(), "prompt": args.prompt, "decode": args.decode,
              "rounds": args.rounds, "median_of_rounds": summary}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
