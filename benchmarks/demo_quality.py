"""Quality of the shipped demo model under offloading: perplexity and greedy top-1 agreement with the
unoffloaded model at 100/50/25/12.5% of each layer's experts, for `miss="exact"`, `miss="skip"` and
`miss="lowbit"` (2-bit copies, the mode's default, and 3-bit ones).

    uv run python benchmarks/demo_quality.py [--tokens 1024]

Held-out text: this project's own source (`packages/*/src/**/*.py`), which the model never saw (it
was trained on a Python 3.12 standard library and site-packages). Teacher forcing in windows of
`--chunk` tokens (512 by default); each window's first token is not scored. `exact` must give the
unoffloaded model's logits bit for bit (asserted). `skip` never waits for a miss (it drops it and
reads the expert for later forwards), so its cache is warmed first with each layer's most-routed
experts on a separate warm-up text (this project's tests), up to capacity. `lowbit` never waits
either (it computes a miss from the expert's low-bit copy and reads the expert for later forwards)
and is warmed the same way; its copies' memory is reported in full slots per layer. Writes
`benchmarks/results/demo_quality.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
from mlx_lm import load
from mlx_lm.utils import load_model

import moe_core
from moe_runtime import demo_model_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 512  # tokens per teacher-forced window, by default
FRACTIONS = (1.0, 0.5, 0.25, 0.125)
MODES = (("exact", 0), ("skip", 0), ("lowbit", 2), ("lowbit", 3))  # (miss, bits of the copies)
TOP_SHARE = 0.2  # routing skew: share of routings taken by the top 20% of a layer's experts


def read_tokens(tokenizer, pattern: str, limit: int) -> list[int]:
    """Files under ROOT matching pattern, each followed by <|endoftext|> (id 0) as in training."""
    ids: list[int] = []
    for file in sorted(ROOT.glob(pattern)):
        ids += [*tokenizer.encode(file.read_text()), 0]
        if len(ids) >= limit:
            break
    return ids[:limit]


def chunks(ids: list[int], size: int) -> list[mx.array]:
    return [mx.array([ids[i : i + size]]) for i in range(0, len(ids) - 1, size)]


def score(model, batches: list[mx.array]) -> tuple[list[mx.array], float]:
    """Logits of every chunk and the mean next-token negative log-likelihood over all of them."""
    logits, nll, count = [], 0.0, 0
    for x in batches:
        out = model(x).astype(mx.float32)
        logprobs = out[0, :-1] - mx.logsumexp(out[0, :-1], axis=-1, keepdims=True)
        target = x[0, 1:]
        picked = mx.take_along_axis(logprobs, target[:, None], axis=-1)
        mx.eval(out, picked)
        nll -= picked.sum().item()
        count += target.size
        logits.append(out)
    return logits, nll / count


def routing_counts(model, path: Path, batches: list[mx.array]) -> np.ndarray:
    """[layers, experts] routing counts, recorded through an offloaded model holding everything."""
    handle = moe_core.offload(model, path, capacity=max(moe_core.describe(model, path).num_experts))
    mx.eval(model.parameters())
    counts = np.zeros((len(handle.capacity), max(handle.num_experts)), dtype=np.int64)

    def on_step(layer: int, ids: np.ndarray) -> None:
        np.add.at(counts[layer], np.asarray(ids).ravel(), 1)

    handle.observe(SimpleNamespace(on_step=on_step))
    for x in batches:
        mx.eval(model(x))
    handle.close()
    return counts


def count(counts: np.ndarray, layer: int, ids: np.ndarray) -> None:
    np.add.at(counts[layer], np.asarray(ids).ravel(), 1)


def skew(counts: np.ndarray) -> list[float]:
    top = int(np.ceil(TOP_SHARE * counts.shape[1]))
    ordered = -np.sort(-counts, axis=1)
    return [round(float(row[:top].sum() / row.sum()), 4) for row in ordered]


def run(
    path: Path,
    batches,
    ref_logits,
    capacity: int,
    miss: str,
    bits: int,
    warm: np.ndarray,
    counts=None,
):
    """One capacity and miss mode over the held-out chunks; routing counts into `counts` if given."""
    model, _ = load_model(path, lazy=True)
    options = {"lowbit_bits": bits} if miss == "lowbit" else {}
    handle = moe_core.offload(model, path, capacity=capacity, miss=miss, **options)
    mx.eval(model.parameters())
    if counts is not None:
        handle.observe(SimpleNamespace(on_step=lambda layer, ids: count(counts, layer, ids)))
    if miss in ("skip", "lowbit"):
        # Neither waits for a miss: start from the warm-up text's most-routed experts.
        order = np.argsort(-warm, axis=1, kind="stable")
        handle.prefetch({layer: order[layer, :capacity].tolist() for layer in range(len(order))})
        handle.reset_stats()
    start = time.perf_counter()
    logits, nll = score(model, batches)
    seconds = time.perf_counter() - start
    stats = handle.stats()
    handle.close()
    agree = total = 0
    identical = True
    worst, summed = 0.0, 0.0
    for got, want in zip(logits, ref_logits, strict=True):
        agree += int((got.argmax(-1) == want.argmax(-1)).sum().item())
        total += got.shape[1]
        identical = identical and bool(mx.array_equal(got, want).item())
        diff = mx.abs(got - want)
        worst = max(worst, diff.max().item())
        summed += diff.mean(axis=-1).sum().item()
    plan = handle.plan
    copies = sum(plan.lowbit_bytes) / sum(plan.expert_bytes)  # in full slots per layer
    if miss == "exact":
        assert identical, f"exact mode at capacity {capacity} changed the logits"
    return {
        "capacity": capacity,
        "miss": miss,
        "perplexity": round(float(np.exp(nll)), 4),
        "top1_agreement": round(agree / total, 4),
        "logits_identical": identical,
        "max_abs_logit_error": round(worst, 4),
        "mean_abs_logit_error": round(summed / total, 4),
        "lowbit_bits": bits,
        "lowbit": stats["lowbit"],
        "copies_bytes": sum(plan.lowbit_bytes),
        "memory_in_full_slots": round(capacity + copies, 2),
        "hit_rate": round(stats["hit_rate"], 4),
        "hits": stats["hits"],
        "misses": stats["misses"],
        "bytes_read": stats["bytes_read"],
        "skipped": sum(layer.get("skipped", 0) for layer in stats["layers"]),
        "seconds": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens")
    parser.add_argument("--warmup-tokens", type=int, default=512, help="warm-up text tokens")
    parser.add_argument("--chunk", type=int, default=CHUNK, help="tokens per teacher-forced window")
    args = parser.parse_args()
    path = demo_model_path()
    context = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    if not 2 <= args.chunk <= context:
        parser.error(f"--chunk must be in [2, {context}], the model's context")

    ref, tokenizer = load(str(path))  # the unmodified mlx-lm model
    held_out = read_tokens(tokenizer, "packages/*/src/**/*.py", args.tokens)
    warm_text = read_tokens(tokenizer, "packages/*/tests/**/*.py", args.warmup_tokens)
    batches = chunks(held_out, args.chunk)
    print(f"held-out {len(held_out)} tokens in {len(batches)} chunks", flush=True)

    start = time.perf_counter()
    ref_logits, ref_nll = score(ref, batches)
    reference = {"perplexity": round(float(np.exp(ref_nll)), 4)}
    reference["seconds"] = round(time.perf_counter() - start, 1)
    print("reference", reference, flush=True)
    del ref

    warm = routing_counts(load_model(path, lazy=True)[0], path, chunks(warm_text, args.chunk))
    num_experts = warm.shape[1]
    held_counts = np.zeros_like(warm)  # filled by the exact run holding every expert

    rows = []
    for miss, bits in MODES:
        for fraction in FRACTIONS:
            capacity = round(fraction * num_experts)
            counts = held_counts if (miss, fraction) == ("exact", 1.0) else None
            row = run(path, batches, ref_logits, capacity, miss, bits, warm, counts)
            row["fraction"] = fraction
            rows.append(row)
            print(row, flush=True)

    per_layer = skew(held_counts)
    result = {
        "benchmark": "demo_quality",
        "model": "demo (moe_runtime.demo_model_path())",
        "fingerprint": moe_core.fingerprint(path),
        "held_out": {
            "text": "this project's packages/*/src/**/*.py, sorted, each file + <|endoftext|>",
            "tokens": len(held_out),
            "chunks": len(batches),
            "chunk_tokens": args.chunk,
            "scored_positions": len(held_out) - len(batches),
        },
        "skip_warm_start": (
            "skip never waits for a miss (it drops it and reads the expert for later forwards); "
            "before each skip run the cache is filled (prefetch, not "
            "counted) with each layer's most-routed experts, up to capacity, counted on "
            f"{len(warm_text)} tokens of this project's packages/*/tests/**/*.py (not the held-out text)"
        ),
        "lowbit": (
            "lossy: a resident low-bit copy of every expert (mlx affine quantization, requantized "
            "from the 4-bit checkpoint at offload; lowbit_bits 2 is the mode's default) answers a "
            "miss at once while the expert is read for later forwards; warmed like skip. "
            "memory_in_full_slots: the slots plus the copies' bytes in full experts per layer "
            "(what the plan takes from the budget); lowbit: routings answered by copies"
        ),
        "counting": "hits/misses: exact counts each distinct expert once per forward; skip and "
        "lowbit count each (token, expert) routing; skip's misses are the dropped routings "
        "(skipped), lowbit's those answered by copies (lowbit)",
        "other_lossy_modes": "none: moe_core.MISS_MODES is " + str(list(moe_core.MISS_MODES)),
        "reference": reference,
        "rows": rows,
        "routing_skew": {
            "definition": f"share of routings taken by each layer's top {TOP_SHARE:.0%} experts "
            f"({int(np.ceil(TOP_SHARE * num_experts))} of {num_experts}) on the held-out text",
            "per_layer": per_layer,
            "mean": round(float(np.mean(per_layer)), 4),
        },
        "machine": {
            "system": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
            "mlx": mx.__version__,
            "device": str(mx.default_device()),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "demo_quality.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"{'capacity':>8} {'miss':>8} {'ppl':>8} {'agree':>6} {'hit':>6} {'MB read':>8} {'mem':>6}"
    )
    for r in rows:
        name = r["miss"] + (str(r["lowbit_bits"]) if r["lowbit_bits"] else "")
        print(
            f"{r['capacity']:>8} {name:>8} {r['perplexity']:>8.3f} {r['top1_agreement']:>6.3f} "
            f"{r['hit_rate']:>6.3f} {r['bytes_read'] / 1e6:>8.2f} {r['memory_in_full_slots']:>6.1f}"
        )
    print(f"reference ppl {reference['perplexity']}; skew {per_layer}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
