"""What a fixture checkpoint is: family, on-disk layout, precision, seed, routing skew, size."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from moe_testing._families import FAMILY, Family, Geometry

FAMILIES: tuple[str, ...] = tuple(FAMILY)

# stacked:          experts as `(E, ...)` tensors, as mlx-lm saves them after `sanitize`.
# per_expert:       one tensor per expert and projection, as the original HF checkpoint
#                   stores them; mlx-lm's `sanitize` stacks them on load.
# split:            stacked, with the first MoE layer's gate/up projections in shard 1 and its
#                   down projection in shard 2.
# per_expert_split: per_expert, with the first MoE layer's experts [0, E/2) in shard 1 and
#                   [E/2, E) in shard 2.
LAYOUTS: tuple[str, ...] = ("stacked", "per_expert", "split", "per_expert_split")

# q4/q8: affine quantized as `mlx_lm.convert -q` does it, from bfloat16. bf16/f32: unquantized.
PRECISIONS: tuple[str, ...] = ("q4", "q8", "bf16", "f32")

QUANT_BITS = {"q4": 4, "q8": 8}
QUANT_GROUP_SIZE = 64
PER_EXPERT_LAYOUTS = ("per_expert", "per_expert_split")
_GEOMETRY_FIELDS = ("num_layers", "hidden_size", "moe_intermediate_size", "num_experts", "top_k")


@dataclass(slots=True, frozen=True)
class CheckpointSpec:
    """One synthetic checkpoint. The same spec always builds byte-identical files.

    The geometry fields left as None take the family's small default (hidden 64, 2-4 layers,
    8-16 experts); set them to build a checkpoint whose experts are as large as a test needs.
    """

    family: str
    layout: str = "stacked"
    precision: str = "q4"
    seed: int = 0
    # How much each router prefers a few experts: the expert of popularity rank r gets
    # -skew * log(r) added to its logit (in units of the logits' spread), Zipf-like. The
    # busiest 20% of experts then take 0.22-0.38 of routings at skew 0, 0.41-0.57 at 1 and
    # 0.52-0.76 at 2, by family (benchmarks/routing_skew.py).
    skew: float = 0.0
    num_layers: int | None = None
    hidden_size: int | None = None
    moe_intermediate_size: int | None = None
    num_experts: int | None = None
    top_k: int | None = None
    # Attention head size, for the families whose config has one (default: the family's 16).
    head_dim: int | None = None
    # Any other config keys, set last: `{"max_position_embeddings": 2048}`. Given as a mapping;
    # kept as sorted (key, JSON value) pairs so that the spec stays hashable.
    config_overrides: Mapping[str, object] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _choice("family", self.family, FAMILIES)
        _choice("layout", self.layout, LAYOUTS)
        _choice("precision", self.precision, PRECISIONS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if (
            isinstance(self.skew, bool)
            or not isinstance(self.skew, int | float)
            or not math.isfinite(self.skew)
            or self.skew < 0
        ):
            raise ValueError(f"skew must be a finite number >= 0, got {self.skew!r}")
        for name in _GEOMETRY_FIELDS:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")

        if isinstance(self.config_overrides, Mapping):
            pairs = tuple(sorted((str(k), json.dumps(v)) for k, v in self.config_overrides.items()))
            object.__setattr__(self, "config_overrides", pairs)
        family = FAMILY[self.family]
        if self.head_dim is not None:
            if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int):
                raise ValueError(f"head_dim must be a positive even int, got {self.head_dim!r}")
            if self.head_dim < 2 or self.head_dim % 2:
                raise ValueError(f"head_dim must be a positive even int, got {self.head_dim}")
            if "head_dim" not in family.config(self.geometry):
                raise ValueError(f"{self.family} has no head_dim in its config")
        if self.layout in PER_EXPERT_LAYOUTS:
            if family.hf_projections is None:
                raise ValueError(
                    f"{self.family} has no per-expert checkpoint form (its original checkpoint "
                    f"fuses the experts), so layout {self.layout!r} is not available"
                )
            if self.quantized:
                raise ValueError(
                    f"layout {self.layout!r} is the HF per-expert form, which mlx-lm never "
                    f"writes quantized: use precision 'bf16' or 'f32', not {self.precision!r}"
                )
        _check_geometry(self.family, family, self.geometry, self.quantized)

    @property
    def quantized(self) -> bool:
        return self.precision in QUANT_BITS

    @property
    def geometry(self) -> Geometry:
        d = FAMILY[self.family].defaults
        return Geometry(
            num_layers=self.num_layers or d.num_layers,
            hidden_size=self.hidden_size or d.hidden_size,
            moe_intermediate_size=self.moe_intermediate_size or d.moe_intermediate_size,
            num_experts=self.num_experts or d.num_experts,
            top_k=self.top_k or d.top_k,
        )

    def config(self) -> dict:
        """The HF `config.json` of this checkpoint (before quantization adds its keys)."""
        config = FAMILY[self.family].config(self.geometry)
        if self.head_dim is not None:
            config["head_dim"] = self.head_dim
        assert isinstance(self.config_overrides, tuple)
        config.update((k, json.loads(v)) for k, v in self.config_overrides)
        return config

    @property
    def name(self) -> str:
        """A directory name that tells the specs apart, e.g. `qwen3_moe-stacked-q4-seed0`."""
        parts = [self.family, self.layout, self.precision, f"seed{self.seed}"]
        if self.skew:
            parts.append(f"skew{self.skew:g}")
        parts += [
            f"{name}{getattr(self, name)}"
            for name in _GEOMETRY_FIELDS
            if getattr(self, name) is not None
        ]
        if self.head_dim is not None:
            parts.append(f"head_dim{self.head_dim}")
        if self.config_overrides:
            text = json.dumps(self.config_overrides).encode()
            parts.append("config" + hashlib.sha256(text).hexdigest()[:8])
        return "-".join(parts)


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(allowed)}")


def _check_geometry(name: str, family: Family, g: Geometry, quantized: bool) -> None:
    if g.num_layers < family.min_layers:
        raise ValueError(f"{name} needs num_layers >= {family.min_layers}, got {g.num_layers}")
    if g.num_experts < 2:
        raise ValueError(f"num_experts must be at least 2, got {g.num_experts}")
    if g.top_k > g.num_experts:
        raise ValueError(f"top_k ({g.top_k}) cannot exceed num_experts ({g.num_experts})")
    # Attention splits the hidden size over 4 heads, whose dims RoPE needs even.
    multiple = QUANT_GROUP_SIZE if quantized else 8
    for field in ("hidden_size", "moe_intermediate_size"):
        if getattr(g, field) % multiple:
            why = f"the quantization group size {QUANT_GROUP_SIZE}" if quantized else "8"
            raise ValueError(f"{field} must be a multiple of {why}, got {getattr(g, field)}")
    if family.expert_groups is not None:
        n_group, topk_group = family.expert_groups
        # The grouped router scores each group by its two best experts.
        if g.num_experts % n_group or g.num_experts // n_group < 2:
            raise ValueError(
                f"{name} routes over {n_group} groups of at least 2 experts: num_experts must "
                f"be a multiple of {n_group} and at least {2 * n_group}, got {g.num_experts}"
            )
        reachable = topk_group * g.num_experts // n_group
        if g.top_k > reachable:
            raise ValueError(
                f"{name} picks top_k from {topk_group} of {n_group} groups, at most {reachable} "
                f"experts, got top_k={g.top_k}"
            )
