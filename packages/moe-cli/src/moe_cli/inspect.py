"""`moe inspect MODEL`: what a checkpoint holds and what running it here would take, without
running it: the model is loaded lazily and only its config and safetensors headers are read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    CapacityOpt,
    HostMemoryOpt,
    MemoryOpt,
    ModelArg,
    describe_capacity,
    err_console,
    human_bytes,
    same_unit,
    user_errors,
)

# Hit rates assumed when no profile is known for the model: what LFUDA reaches on real routing
# at small-to-middling capacities; a uniform router would do worse, a skewed one better.
ASSUMED_HIT_RATES = (0.5, 0.9)

# Host-to-GPU copy speed assumed for the host tier's predicted decode speed: PCIe 4.0 x16's
# usable rate (an H200 moved pinned expert rows at 45.6 GB/s, benchmarks/speed_gpu.py).
ASSUMED_BUS_MBPS = 20_000

# Config keys that announce always-on shared experts, and how to count them.
_SHARED_KEYS = ("n_shared_experts", "num_shared_experts", "shared_expert_intermediate_size")


def inspect(
    model: ModelArg = None,
    memory: MemoryOpt = None,
    host_memory: HostMemoryOpt = None,
    capacity: CapacityOpt = None,
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Profile (from `moe profile`) to predict the hit rate with "
            "(default: the shipped one for this checkpoint, if any).",
            show_default=False,
        ),
    ] = None,
    disk_mbps: Annotated[
        float | None,
        typer.Option(
            "--disk-mbps",
            min=0.001,
            help="Disk read speed in MB/s (default: measure it).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a model's experts, what fits in memory and the decode speed the disk allows."""
    with user_errors():
        report = build_report(
            model,
            memory=memory,
            host_memory=host_memory,
            capacity=capacity,
            profile=profile,
            disk_mbps=disk_mbps,
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report)


def build_report(
    model: str | None,
    *,
    memory: str | None,
    host_memory: str | None = None,
    capacity: int | None = None,
    profile: Path | None = None,
    disk_mbps: float | None,
) -> dict:
    from ._common import parse_memory

    memory_bytes = parse_memory(memory)
    host_bytes = parse_memory(host_memory, option="--host-memory")

    import moe_core
    from moe_runtime import load_checked, resolve_model

    _, path = resolve_model(model)
    lazy_model, _, config = load_checked(path, tokenizer=False)
    geometry = moe_core.describe(lazy_model, path)
    fingerprint = geometry.fingerprint

    experts = list(geometry.num_experts)
    expert_bytes = list(geometry.expert_bytes)
    all_expert_bytes = sum(e * b for e, b in zip(experts, expert_bytes, strict=True))
    report: dict = {
        "model": str(path),
        "family": config.get("model_type"),
        "fingerprint": fingerprint,
        "moe_layers": len(experts),
        "experts": _one_or_list(experts),
        "top_k": _one_or_list(list(geometry.top_k)),
        "shared_experts": _shared_experts(config),
        "bytes_per_expert": _one_or_list(expert_bytes),
        "expert_bytes": all_expert_bytes,
        "non_expert_bytes": geometry.dense_bytes,
        "total_bytes": all_expert_bytes + geometry.dense_bytes,
    }

    backend = moe_core.detect_backend()
    if host_bytes and backend.unified_memory:
        raise ValueError(
            f"--host-memory is for CUDA, where the GPU has memory of its own; on {backend.name} "
            "there is one memory, which --memory sizes"
        )
    try:
        budget = moe_core.plan_budget(
            geometry, memory=memory_bytes, capacity=capacity, host_memory=host_bytes
        )
    except moe_core.BudgetError as e:
        report["fit"] = {"fits": False, "reason": str(e)}
        slots = host = None
    else:
        slots = list(budget.capacity)
        host = list(budget.host_capacity) or None
        report["fit"] = {
            "fits": True,
            "memory": budget.memory,
            "backend": budget.backend,
            "capacity": _one_or_list(slots),
            "all_experts_fit": slots == experts,
            "host_memory": budget.host_memory,
            "host_capacity": host and _one_or_list(host),
            "reason": budget.reason,
        }

    known = _known_profile(fingerprint, profile)
    report["profile"] = known and {"source": known["source"]}

    if disk_mbps is None:
        from ._disk import measure_disk

        disk_mbps = measure_disk(geometry.banks)
        report["disk"] = {"mb_per_s": disk_mbps, "measured": True}
    else:
        report["disk"] = {"mb_per_s": disk_mbps, "measured": False}
    if slots is not None:
        report["prediction"] = predict(geometry, slots, disk_mbps, known)
        if host is not None:
            report["prediction"]["host_tier"] = predict_tiers(
                geometry, slots, host, disk_mbps, known
            )
    return report


def predict_tiers(
    geometry, capacity: list[int], host: list[int], disk_mbps: float, profile: dict | None
) -> dict:
    """Decode speed with the host tier (CUDA): a GPU miss the tier holds is copied at the bus's
    speed, one it lacks is read from disk. Ceilings, as `predict`'s: compute is not counted."""
    gpu = predict(geometry, capacity, disk_mbps, profile)
    both = predict(geometry, host, disk_mbps, profile)  # the tier holds what the GPU holds too
    tok_s = []
    for gpu_mb, disk_mb in zip(gpu["mb_read_per_token"], both["mb_read_per_token"], strict=True):
        seconds = (gpu_mb - disk_mb) / ASSUMED_BUS_MBPS + disk_mb / disk_mbps
        tok_s.append(1 / seconds if seconds > 0 else None)
    return {
        "hit_rate": both["hit_rate"],
        "hit_rate_source": both["hit_rate_source"],
        "mb_from_host_per_token": [
            g - d for g, d in zip(gpu["mb_read_per_token"], both["mb_read_per_token"], strict=True)
        ],
        "mb_read_per_token": both["mb_read_per_token"],
        "bus_mb_per_s": ASSUMED_BUS_MBPS,
        "tok_s": tok_s,
    }


def predict(geometry, capacity: list[int], disk_mbps: float, profile: dict | None) -> dict:
    """Decode tokens per second the disk allows: every token reads each MoE layer's missed experts,
    `top_k * (1 - hit rate)` of them. Compute time is not counted, so these are ceilings."""
    if profile is not None:
        rate = _profile_hit_rate(profile, capacity)
        rates, source = (rate, rate), "profile"
    else:
        uniform = min(c / e for c, e in zip(capacity, geometry.num_experts, strict=True))
        rates = (max(uniform, ASSUMED_HIT_RATES[0]), max(uniform, ASSUMED_HIT_RATES[1]))
        source = "assumed"
    if all(c >= e for c, e in zip(capacity, geometry.num_experts, strict=True)):
        rates = (1.0, 1.0)
        source = "all experts resident"

    # Bytes read per token if every selected expert missed.
    all_miss = sum((k or 1) * b for k, b in zip(geometry.top_k, geometry.expert_bytes, strict=True))
    per_token = [all_miss * (1 - rate) for rate in rates]
    return {
        "hit_rate": list(rates),
        "hit_rate_source": source,
        "mb_read_per_token": [b / 1e6 for b in per_token],
        "tok_s": [disk_mbps * 1e6 / b if b > 0 else None for b in per_token],
    }


def _known_profile(fingerprint: str, path: Path | None) -> dict | None:
    """The given profile (refused if it is another model's) or the shipped one for this
    checkpoint, if there is one: its hit curves and source."""
    from moe_profiles import Profile, find_profile

    profile: Profile | None
    if path is not None:
        profile = Profile.load(path)
        profile.check(fingerprint)
    else:
        profile = find_profile(fingerprint)
    if profile is None:
        return None
    return {"source": dict(profile.source), "curves": profile.curves, "counts": profile.counts}


def _profile_hit_rate(profile: dict, capacity: list[int]) -> float:
    """Hit rate over the profile's prompts at these capacities, from its measured hit curves.

    A curve's last point holds every expert, so its only misses are the first use of each expert
    ever routed to: hits there plus that count is the layer's number of accesses."""
    import numpy as np

    hits = accesses = 0.0
    for curve, counts, slots in zip(profile["curves"], profile["counts"], capacity, strict=True):
        caps, layer_hits = zip(*curve, strict=True)
        hits += float(np.interp(slots, caps, layer_hits))
        accesses += layer_hits[-1] + sum(1 for c in counts if c)
    return hits / accesses if accesses else 0.0


def _shared_experts(config: dict) -> int:
    config = config.get("text_config", config)
    for key in _SHARED_KEYS:
        value = config.get(key)
        if value:
            return 1 if key == "shared_expert_intermediate_size" else int(value)
    return 0


def _one_or_list(values: list):
    return values[0] if len(set(values)) == 1 else values


def print_report(r: dict) -> None:
    out = typer.echo
    out(f"model        {r['model']}")
    out(f"family       {r['family']}  (fingerprint {r['fingerprint']})")
    out(
        f"experts      {r['moe_layers']} MoE layers x {r['experts']} experts, top-{r['top_k']}"
        f", {r['shared_experts']} shared"
    )
    out(f"per expert   {_bytes(r['bytes_per_expert'])}")
    total, experts, dense = same_unit(r["total_bytes"], r["expert_bytes"], r["non_expert_bytes"])
    out(f"weights      {total} in all: {experts} experts, {dense} non-expert")
    fit = r["fit"]
    if not fit["fits"]:
        out(f"fits         no: {fit['reason']}")
    else:
        per_layer = (
            r["experts"] if isinstance(r["experts"], list) else [r["experts"]] * r["moe_layers"]
        )
        capacity = (
            fit["capacity"]
            if isinstance(fit["capacity"], list)
            else [fit["capacity"]] * r["moe_layers"]
        )
        what = (
            "every expert fits"
            if fit["all_experts_fit"]
            else describe_capacity(capacity, per_layer)
        )
        where = "as given" if fit["memory"] is None else f"in {human_bytes(fit['memory'])}"
        gpu = " of GPU memory" if fit["backend"] == "cuda" else ""
        out(f"fits         {what} {where}{gpu} ({fit['backend']})")
        if fit.get("host_capacity"):
            host = fit["host_capacity"]
            host = host if isinstance(host, list) else [host] * r["moe_layers"]
            out(
                f"host tier    {describe_capacity(host, per_layer)} in "
                f"{human_bytes(fit['host_memory'])} of host memory"
            )
    out(f"profile      {'known' if r['profile'] else 'none known for this checkpoint'}")
    disk = r["disk"]
    out(f"disk         {disk['mb_per_s']:.0f} MB/s {'measured' if disk['measured'] else 'given'}")
    p = r.get("prediction")
    if p:
        lo, hi = p["hit_rate"]
        if p["tok_s"][1] is None:
            out("decode       not disk-bound: every expert stays in memory")
        else:
            rates = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
            speeds = " - ".join("compute-bound" if s is None else f"{s:.1f}" for s in p["tok_s"])
            out(
                f"decode       up to {speeds} tok/s from disk at {rates} hit rate ({p['hit_rate_source']})"
            )
        tier = p.get("host_tier")
        if tier:
            lo, hi = tier["hit_rate"]
            rates = f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"
            speeds = " - ".join("bus-bound" if s is None else f"{s:.1f}" for s in tier["tok_s"])
            bus = tier["bus_mb_per_s"] / 1000
            out(
                f"  with host  up to {speeds} tok/s: GPU misses from the host tier at "
                f"{bus:.0f} GB/s (assumed), the rest from disk at {rates} hit rate"
            )
    err_console.print("[dim]speeds count disk reads only; compute adds to each token[/]")


def _bytes(value) -> str:
    if isinstance(value, list):
        return ", ".join(human_bytes(v) for v in value)
    return human_bytes(value)
