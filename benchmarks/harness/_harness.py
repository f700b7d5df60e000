"""The benchmark: contenders alternated round by round (A B C A B C ...), each run a fresh child
process started with the checkpoint's page cache dropped and under the same memory cap, then
medians per contender, capacity and prompt length, and the targets as ratios."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import _contenders as C
from . import _system as S
from ._checkpoint import BenchSpec, bench_checkpoint

METRICS = (
    "decode_tps", "prefill_tps", "ttft_s", "load_s", "peak_memory", "hit_rate", "decode_hit_rate",
    "bytes_per_decode_token", "miss_service_mb_s", "belady_hit_rate", "top20_share",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BenchConfig:
    model: Path | None = None  # None: a bench checkpoint built from `spec`
    spec: BenchSpec = field(default_factory=BenchSpec)
    capacities: tuple[float, ...] = (1.0, 0.5, 0.25)
    prompts: tuple[int, ...] = (512, 2048)
    decode_tokens: int = 32
    repeats: int = 3
    contenders: tuple[str, ...] = ("mlx", "moe", "moe-packed", "moe-lookahead", "bigrig")
    cap: bool = True  # equal cgroup memory cap per child (when root)
    cap_slack: int = 2 << 30  # bytes over non-expert + resident expert bytes
    cache_dir: Path = Path.home() / ".cache" / "moe" / "bench"
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not self.capacities or not all(0 < c <= 1 for c in self.capacities):
            raise ValueError(f"capacities are fractions in (0, 1], got {self.capacities}")
        if not self.prompts or min(self.prompts) < 1 or self.decode_tokens < 2:
            raise ValueError("prompts need at least 1 token and decode at least 2")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
        unknown = set(self.contenders) - set(C.CONTENDERS)
        if unknown:
            raise ValueError(
                f"unknown contenders {sorted(unknown)}; choose from {list(C.CONTENDERS)}"
            )


def run_bench(cfg: BenchConfig, log=print) -> dict:
    cache = Path(cfg.cache_dir).expanduser()
    model = Path(cfg.model) if cfg.model else bench_checkpoint(cfg.spec, cache, log=log)
    config = json.loads((model / "config.json").read_text())
    num_experts = config["num_experts"]
    geometry = _geometry(model)
    sizes = {
        "experts": sum(
            e * b for e, b in zip(geometry.num_experts, geometry.expert_bytes, strict=True)
        ),
        "dense": geometry.dense_bytes,
    }
    doc = {
        "machine": S.machine(),
        "checkpoint": _describe(model, cfg, config, sizes),
        "settings": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("spec", "model", "cache_dir")},
            "cache_drop": "posix_fadvise(DONTNEED) on every checkpoint file + drop_caches as root",
            "mode": "exact",
        },
        "scales": {**S.scales_choice(), "chosen": cfg.spec.scales},
        "unavailable": {},
    }
    capper = S.MemoryCap() if cfg.cap else None
    doc["memory_cap"] = {
        "enabled": bool(capper and capper.available),
        "why_not": None
        if capper and capper.available
        else (capper.why_not if capper else "--no-cap"),
        "cgroup_version": capper.version if capper else None,
        "slack_bytes": cfg.cap_slack,
        "ceiling": "mlx-lm (resident) runs without a cap: it holds every expert",
    }
    log("measuring the raw disk ...")
    doc["disk"] = S.disk_speed(model, list(geometry.banks))

    runs, extra_paths, envs = _plan(cfg, model, cache, num_experts, doc, log)
    results: dict[tuple, list[dict]] = {}
    for repeat in range(cfg.repeats):
        for prompt in cfg.prompts:
            for contender, frac, spec in runs:
                spec = {**spec, "prompt_tokens": prompt, "seed": repeat}
                drop = S.drop_cache([model, *extra_paths.get(contender.name, [])])
                cap = None
                if contender.kind != "mlx":
                    cap = sizes["dense"] + int(frac * sizes["experts"]) + cfg.cap_slack
                with (
                    capper.group(cap) if capper else S.MemoryCap.group(S.MemoryCap(), None)
                ) as procs:
                    python = envs.get(contender.name, (sys.executable, None))
                    t0 = time.perf_counter()
                    r = S.run_child(
                        [str(python[0]), str(C.CHILD), json.dumps(spec)],
                        procs, env=python[1], timeout=cfg.timeout,
                    )  # fmt: skip
                r.update(
                    cap_bytes=cap if procs else None, cold=drop, wall_s=time.perf_counter() - t0
                )
                results.setdefault((contender.name, frac, prompt), []).append(r)
                log(f"[{repeat + 1}/{cfg.repeats}] {contender.name} @{frac:.0%} prompt {prompt}: "
                    + (f"decode {r['decode_tps']:.2f} tok/s, ttft {r['ttft_s']:.1f}s" if r.get("ok")
                       else f"FAILED {r.get('error')}"))  # fmt: skip
    doc["results"] = [
        _summary(name, frac, prompt, rs) for (name, frac, prompt), rs in results.items()
    ]
    doc["targets"] = targets(doc)
    return doc


def _plan(cfg, model, cache, num_experts, doc, log):
    """(contender, capacity fraction, child spec) in alternation order, after one-time setup."""
    features = C.moe_features() if any(c.startswith("moe") for c in cfg.contenders) else set()
    runs, extra_paths, envs = [], {}, {}
    base = {"model": str(model), "decode_tokens": cfg.decode_tokens,
            "vocab_size": json.loads((model / "config.json").read_text())["vocab_size"]}  # fmt: skip
    for key in cfg.contenders:
        contender = C.CONTENDERS[key]
        try:
            if contender.kind == "mlx":
                runs.append((contender, 1.0, {**base, "kind": "mlx"}))
                continue
            spec = {**base, "kind": contender.kind}
            if contender.kind == "moe":
                spec.update(C.child_options(contender, features))
                if spec.get("packed"):
                    C.ensure_packed_moe(model)
            else:
                python = C.bigrig_python(cache, log=log)
                log("building BigRig's expert blob (untimed) ...")
                blob = C.bigrig_blob(python, model, cache)
                spec["blob"] = str(blob)
                extra_paths[contender.name] = [blob]
                envs[contender.name] = (python, C.bigrig_env(cache))
            for frac in cfg.capacities:
                runs.append(
                    (contender, frac, {**spec, "capacity": max(1, round(frac * num_experts))})
                )
        except Exception as e:
            doc["unavailable"][contender.name] = f"{type(e).__name__}: {e}"
            log(f"{contender.name}: unavailable ({e})")
    return runs, extra_paths, envs


def _summary(name, frac, prompt, rs) -> dict:
    ok = [r for r in rs if r.get("ok")]
    row = {"contender": name, "capacity_fraction": frac, "prompt_tokens": prompt,
           "runs": len(rs), "ok_runs": len(ok)}  # fmt: skip
    for m in METRICS:
        values = [r[m] for r in ok if r.get(m) is not None]
        row[m] = statistics.median(values) if values else None
    if ok and "prefill" in ok[0]:
        row["prefill"] = {k: sum(r["prefill"][k] for r in ok) for k in ok[0]["prefill"]}
    row["errors"] = [r.get("error") for r in rs if not r.get("ok")]
    row["cap_bytes"] = rs[0].get("cap_bytes")
    row["raw"] = rs
    return row


def _ratio(a, b):
    return a / b if a is not None and b else None


def targets(doc: dict) -> dict:
    rows = {(r["contender"], r["capacity_fraction"], r["prompt_tokens"]): r for r in doc["results"]}
    moe = sorted({r["contender"] for r in doc["results"] if r["contender"].startswith("moe")})
    disk = doc["disk"]
    disk_best = max(v for k, v in disk.items() if k.startswith("random_") and k.endswith("_mb_s"))
    out = {"1_resident_decode_vs_mlx": [], "2_vs_bigrig": [], "3_miss_service_vs_disk": [],
           "4_hit_rate_vs_belady": [], "5_prefill_reads_once": []}  # fmt: skip
    for (name, frac, prompt), r in rows.items():
        if name not in moe:
            continue
        where = {"contender": name, "capacity_fraction": frac, "prompt_tokens": prompt}
        if frac == 1.0 and ("mlx-lm (resident)", 1.0, prompt) in rows:
            ratio = _ratio(r["decode_tps"], rows["mlx-lm (resident)", 1.0, prompt]["decode_tps"])
            out["1_resident_decode_vs_mlx"].append(
                {
                    **where,
                    "ratio": ratio,
                    "goal": ">= 0.95",
                    "met": ratio is not None and ratio >= 0.95,
                }
            )
        big = rows.get(("bigrig 0.9.1", frac, prompt))
        if frac < 1.0 and big:
            d = _ratio(r["decode_tps"], big["decode_tps"])
            t = _ratio(r["ttft_s"], big["ttft_s"])
            out["2_vs_bigrig"].append(
                {
                    **where,
                    "decode_ratio": d,
                    "ttft_ratio": t,
                    "goal": "decode >= 1.25, ttft <= 0.8",
                    "met": d is not None and t is not None and d >= 1.25 and t <= 0.8,
                }
            )
        if frac < 1.0:
            m = _ratio(r["miss_service_mb_s"], disk_best)
            out["3_miss_service_vs_disk"].append(
                {
                    **where,
                    "miss_service_mb_s": r["miss_service_mb_s"],
                    "disk_random_mb_s": disk_best,
                    "ratio": m,
                    "goal": ">= 0.8",
                    "met": m is not None and m >= 0.8,
                }
            )
            h = _ratio(r["hit_rate"], r["belady_hit_rate"])
            out["4_hit_rate_vs_belady"].append(
                {
                    **where,
                    "hit_rate": r["hit_rate"],
                    "belady_hit_rate": r["belady_hit_rate"],
                    "ratio": h,
                    "goal": ">= 0.95",
                    "met": h is not None and h >= 0.95,
                }
            )
        if r.get("prefill"):
            p = r["prefill"]
            out["5_prefill_reads_once"].append(
                {
                    **where,
                    **p,
                    "goal": "misses <= touched per chunk",
                    "met": p["chunks_reading_an_expert_twice"] == 0,
                }
            )
    return out  # fmt: skip


def _geometry(model: Path):
    """moe-core's reading of the checkpoint's headers: expert and non-expert bytes, bank maps."""
    from mlx_lm.utils import load_model

    import moe_core

    return moe_core.describe(load_model(model, lazy=True)[0], model)


def _describe(model: Path, cfg: BenchConfig, config: dict, sizes: dict) -> dict:
    info = {"path_name": model.name, "family": config.get("model_type"),
            "layers": config.get("num_hidden_layers"), "num_experts": config.get("num_experts"),
            "top_k": config.get("num_experts_per_tok"), "hidden_size": config.get("hidden_size"),
            "moe_intermediate_size": config.get("moe_intermediate_size"),
            "expert_bytes_total": sizes["experts"], "non_expert_bytes": sizes["dense"]}  # fmt: skip
    built = model / "bulk.json"
    if built.exists():
        info["built"] = json.loads(built.read_text())
    return info
