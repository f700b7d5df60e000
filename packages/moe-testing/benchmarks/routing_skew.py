"""How much routing a given skew concentrates: the share of routings that the busiest 20% of
experts take, per family, on the default geometry, over 2048 random tokens.

    uv run python packages/moe-testing/benchmarks/routing_skew.py

Also prints how long each build took, so the "builds in well under a few seconds" claim can
be checked on the machine at hand, including one checkpoint with 28 MB of experts.
"""

from __future__ import annotations

import platform
import tempfile
import time

import mlx.core as mx

from moe_testing import (
    FAMILIES,
    CheckpointSpec,
    build_checkpoint,
    reference_model,
    routing_counts,
    top_share,
)

SKEWS = (0.0, 0.5, 1.0, 2.0)


def main() -> None:
    print(f"{platform.machine()} {platform.system()}, mlx {mx.__version__}, {mx.default_device()}")
    print(f"| family | experts, top-k | uniform | {' | '.join(f'skew {s:g}' for s in SKEWS)} |")
    print(f"|---|---|---|{'---|' * len(SKEWS)}")
    builds = []
    with tempfile.TemporaryDirectory() as out:
        for family in FAMILIES:
            shares = []
            for skew in SKEWS:
                start = time.perf_counter()
                path = build_checkpoint(CheckpointSpec(family, precision="f32", skew=skew), out)
                builds.append(time.perf_counter() - start)
                model, _ = reference_model(path)
                shares.append(top_share(routing_counts(model, num_tokens=2048)))
            num_experts, top_k = _num_experts(model), model.args.num_experts_per_tok
            uniform = max(1, round(0.2 * num_experts)) / num_experts
            row = " | ".join(f"{s:.2f}" for s in shares)
            print(f"| {family} | {num_experts}, {top_k} | {uniform:.2f} | {row} |")
        print(
            f"\nsmall builds: median {sorted(builds)[len(builds) // 2]:.2f} s, max {max(builds):.2f} s"
        )
        large = CheckpointSpec(
            "qwen3_moe", hidden_size=512, moe_intermediate_size=512, num_experts=32
        )
        start = time.perf_counter()
        path = build_checkpoint(large, out)
        took = time.perf_counter() - start
        size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e6
        print(f"q4, hidden 512, 32 experts of 512: {size:.0f} MB of weights in {took:.2f} s")


def _num_experts(model) -> int:
    config = model.args
    for name in ("num_experts", "num_local_experts", "n_routed_experts"):
        if getattr(config, name, None):
            return getattr(config, name)
    raise ValueError(f"no expert count in {type(config).__module__}.ModelArgs")


if __name__ == "__main__":
    main()
