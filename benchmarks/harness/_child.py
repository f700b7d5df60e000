"""One timed run of one contender, in a fresh process: `python _child.py SPEC_JSON`; prints one
JSON line. Standalone on purpose (mlx, mlx-lm and numpy only, moe imported only for moe
contenders) so that BigRig's separate venv can run the very same measurement code."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import numpy as np


def vm_hwm() -> int:
    """Peak resident set size of this process (bytes), from /proc; 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load(spec: dict):
    """(model, tokenizer, stats() -> dict, extra) for the contender; nothing here is timed."""
    from pathlib import Path

    import mlx.core as mx

    kind, path = spec["kind"], Path(spec["model"])
    if kind == "mlx":
        import mlx_lm

        model, tok = mlx_lm.load(str(path))
        return model, tok, lambda: {}, {}
    if kind == "moe":
        import inspect

        from mlx_lm.utils import load_model, load_tokenizer

        import moe_core

        model, config = load_model(path, lazy=True)
        tok = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
        kw = {"capacity": spec["capacity"], "policy": spec.get("policy", "lfuda")}
        accepted = inspect.signature(moe_core.offload).parameters
        for opt in ("packed", "lookahead"):
            if opt in spec:
                if opt not in accepted:
                    raise RuntimeError(f"moe_core.offload has no {opt!r} option yet")
                kw[opt] = spec[opt]
        handle = moe_core.offload(model, path, **kw)
        mx.eval(model.parameters())
        extra = {"handle": handle}
        return model, tok, handle.stats, extra
    if kind == "bigrig":
        from bigrig_engine.stream import load_streaming

        model, tok, h = load_streaming(
            str(path), spec["blob"], capacity=int(spec["capacity"]), policy="lfuda", verbose=False
        )

        def stats():
            s = h.stats()
            return {
                "hits": s["hits"],
                "misses": s["misses"],
                "bytes_read": int(s["fetch_gb"] * 1e9),
                "read_seconds": s["fetch_seconds"],
            }

        return model, tok, stats, {"bigrig": h}
    raise ValueError(f"unknown contender kind {kind!r}")


def attach_trace(handle):
    """Record the routing trace, and per forward of each layer: tokens, unique experts, and the
    layer's miss count so far (the hook runs before the cache step, so the next call's count
    minus this one's is this step's misses)."""
    from moe_profiles import TraceRecorder

    recorder = TraceRecorder(list(handle.num_experts))
    steps: list[tuple[int, int, int, int]] = []

    def on_step(layer, ids):
        recorder.on_step(layer, ids)
        misses = handle.layers[layer].cache.stats.misses
        steps.append((layer, ids.shape[0], int(np.unique(ids).size), misses))

    handle.observe(SimpleNamespace(on_step=on_step))
    return recorder, steps


def prefill_chunks(handle, steps) -> dict:
    """Per prefill chunk (a forward of more than one token) and layer: touched experts vs reads."""
    final = [layer.cache.stats.misses for layer in handle.layers]
    rows, last = [], {}
    for i in range(len(steps) - 1, -1, -1):
        layer, tokens, unique, misses = steps[i]
        after = last.get(layer, final[layer])
        last[layer] = misses
        if tokens > 1:
            rows.append((unique, after - misses))
    over = [r for r in rows if r[1] > r[0]]
    return {
        "chunks": len(rows),
        "touched": int(sum(r[0] for r in rows)),
        "misses": int(sum(r[1] for r in rows)),
        "chunks_reading_an_expert_twice": len(over),
    }


def run(spec: dict) -> dict:
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    t0 = time.perf_counter()
    model, tok, stats, extra = load(spec)
    load_s = time.perf_counter() - t0
    handle = extra.get("handle")
    recorder = steps = None
    if handle is not None and spec.get("trace", True):
        recorder, steps = attach_trace(handle)
    rng = np.random.default_rng(spec.get("seed", 0))
    vocab = spec.get("vocab_size") or 1000
    prompt = mx.array(rng.integers(2, vocab, size=spec["prompt_tokens"]).tolist())
    at_first = None
    start = time.perf_counter()
    first = last = None
    count = 0
    token = None
    for response in stream_generate(model, tok, prompt, max_tokens=spec["decode_tokens"]):
        now = time.perf_counter()
        count += 1
        token = int(response.token)
        if first is None:
            first = now
            at_first = stats()
        last = now
    end = stats()
    ttft = first - start
    decode_tokens = count - 1
    out = {
        "load_s": load_s,
        "prompt_tokens": spec["prompt_tokens"],
        "generated_tokens": count,
        "ttft_s": ttft,
        "prefill_tps": spec["prompt_tokens"] / ttft,
        "decode_tps": decode_tokens / (last - first) if decode_tokens > 0 else None,
        "peak_memory": vm_hwm(),
        "last_token": token,
    }
    if end:
        out.update(cache_stats(end, at_first, decode_tokens))
    if recorder is not None:
        from moe_profiles import belady

        trace = recorder.trace()
        counts = np.concatenate([c for c in trace.counts()])
        per_layer = [np.sort(c)[::-1] for c in trace.counts()]
        top = sum(c[: max(1, len(c) // 5)].sum() for c in per_layer) / max(1, counts.sum())
        opt = belady(trace, list(handle.capacity))
        out["top20_share"] = float(top)
        out["belady_hit_rate"] = opt.hit_rate
        out["prefill"] = prefill_chunks(handle, steps)
        out["capacity"] = list(handle.capacity)
    return out


def cache_stats(end: dict, at_first: dict, decode_tokens: int) -> dict:
    def rate(s):
        total = s["hits"] + s["misses"]
        return s["hits"] / total if total else None

    delta = {k: end[k] - at_first[k] for k in ("hits", "misses", "bytes_read", "read_seconds")}
    return {
        "hits": end["hits"],
        "misses": end["misses"],
        "hit_rate": rate(end),
        "decode_hit_rate": rate(delta),
        "bytes_read": end["bytes_read"],
        "read_seconds": end["read_seconds"],
        "bytes_per_decode_token": delta["bytes_read"] / decode_tokens if decode_tokens else None,
        "miss_service_mb_s": end["bytes_read"] / end["read_seconds"] / 1e6
        if end["read_seconds"]
        else None,
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = {"ok": True, **run(spec)}
    except Exception as e:  # the harness records why a run failed and goes on
        import traceback

        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()}
    print("BENCH-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
