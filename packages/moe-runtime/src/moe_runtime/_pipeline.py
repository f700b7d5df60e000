"""A model split across the ranks of an MLX distributed group by layers (pipeline parallel).

mlx-lm's own hook (`model.model.pipeline(group, split)`, models/pipeline.py) does it for the
families that have it (qwen3_moe, qwen3_next, deepseek_v3, glm4_moe, ...). For the MoE families
without it (qwen2_moe, mixtral, olmoe, gpt_oss) `pipeline` below applies the same split from
outside: mlx-lm's `PipelineMixin.pipeline` picks the layers, and the stage's first and last layer
are wrapped to receive the hidden state from the stage before and send it on, exactly where
mlx-lm's pipelined models do, so the model files are used unchanged.

As in mlx-lm, rank 0 runs the last layers and every rank computes the logits from rank 0's
hidden state (an `all_gather` at the end of the stack), so every rank samples the same token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import ArraysCache
from mlx_lm.models.pipeline import PipelineMixin

from moe_core import UnsupportedModelError

# Families whose decoder loop is `for layer, c in zip(self.layers, cache): h = layer(h, mask, c)`
# with one hidden state in and out, which is what the stage wrappers below rely on.
ADAPTED = ("qwen2_moe", "mixtral", "olmoe", "gpt_oss")


@dataclass(frozen=True, slots=True)
class Stage:
    """Which layers this rank runs: `[start, end)` of `num_layers`."""

    rank: int
    size: int
    start: int
    end: int
    num_layers: int

    def as_dict(self) -> dict:
        return {"rank": self.rank, "size": self.size, "layers": [self.start, self.end]}


def pipeline(
    model: nn.Module, group: mx.distributed.Group, split: list[int] | None = None
) -> Stage:
    """Keep only this rank's layers of a lazily loaded mlx-lm `model` (before any weight is
    evaluated, so the other layers are never read). `split` gives the layers of each rank, in rank
    order (rank 0 runs the last ones); by default they are shared out evenly."""
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "layers", None), list):
        raise UnsupportedModelError(f"{type(model).__module__}: no decoder layer list to split")
    num_layers = len(inner.layers)
    if split is not None and (
        not isinstance(split, list | tuple) or not all(isinstance(s, int) for s in split)
    ):
        raise ValueError(f"split must be a list of layer counts, one per rank; got {split!r}")
    if group.size() > num_layers:
        raise ValueError(f"{group.size()} ranks cannot split {num_layers} layers")
    if hasattr(inner, "pipeline"):
        inner.pipeline(group, split=list(split) if split is not None else None)
    else:
        model_type = getattr(getattr(model, "args", None), "model_type", type(model).__module__)
        if model_type not in ADAPTED:
            raise UnsupportedModelError(
                f"{model_type}: mlx-lm has no pipeline split for this family and moe adapts "
                f"only {', '.join(ADAPTED)}"
            )
        _adapt(inner, group, list(split) if split is not None else None)
    return Stage(group.rank(), group.size(), inner.start_idx, inner.end_idx, num_layers)


def _adapt(inner: nn.Module, group: mx.distributed.Group, split: list[int] | None) -> None:
    """mlx-lm's split for a model without the hook: the parameter tree keeps every layer's name
    (earlier layers become None, later ones go, as `PipelineMixin` does), while the attributes the
    model's own `__call__` reads see only this stage's layers, the first and last wrapped."""
    num_layers = len(inner.layers)
    per_layer = {
        name: value
        for name, value in inner.items()
        if name != "layers" and isinstance(value, list) and len(value) == num_layers
    }  # e.g. gpt_oss's layer_types
    PipelineMixin.pipeline(inner, group, split)  # type: ignore[arg-type]  # the mixin's split, lent
    start, end = inner.start_idx, inner.end_idx
    layers = list(inner.layers[start:end])
    layers[0] = _Receive(layers[0], group)
    layers[-1] = _Send(layers[-1], group)
    # Instance attributes shadow the module's dict for attribute reads only.
    object.__setattr__(inner, "layers", layers)
    for name, value in per_layer.items():
        object.__setattr__(inner, name, value[start:end])
    if "layer_types" in per_layer:  # gpt_oss: where each mask's cache offset is read
        types = inner.layer_types
        for attr, kind in (("swa_idx", "sliding_attention"), ("ga_idx", "full_attention")):
            # A stage without this kind of layer builds a mask it never uses: any index will do.
            setattr(inner, attr, types.index(kind) if kind in types else 0)


class _Receive:
    """A stage's first layer: its input is the previous stage's output, not the embedding."""

    def __init__(self, layer, group: mx.distributed.Group) -> None:
        self.layer, self.group = layer, group

    def __call__(self, h: mx.array, *args, **kwargs) -> mx.array:
        rank, size = self.group.rank(), self.group.size()
        if rank < size - 1:
            h = mx.distributed.recv_like(h, rank + 1, group=self.group)
        return self.layer(h, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.layer, name)


class _Send:
    """A stage's last layer: send the hidden state on, then share rank 0's with every rank."""

    def __init__(self, layer, group: mx.distributed.Group) -> None:
        self.layer, self.group = layer, group

    def __call__(self, h: mx.array, *args, **kwargs) -> mx.array:
        rank, size = self.group.rank(), self.group.size()
        h = self.layer(h, *args, **kwargs)
        if rank != 0:
            h = mx.distributed.send(h, (rank - 1) % size, group=self.group)
            cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
            if cache is not None:
                # A prefill evaluates only the cache: make the send part of it.
                if isinstance(cache, ArraysCache):
                    cache[0] = mx.depends(cache[0], h)
                else:
                    cache.keys = mx.depends(cache.keys, h)
        if size > 1:
            h = mx.distributed.all_gather(h, group=self.group)[: h.shape[0]]
        return h

    def __getattr__(self, name: str):
        return getattr(self.layer, name)


def sync_random(group: mx.distributed.Group) -> None:
    """Give every rank the same random state, so sampling picks the same token everywhere (as
    mlx-lm's server does)."""
    state = cast(list[mx.array], mx.random.state)
    seed = mx.distributed.all_sum(state[0], group=group).view(mx.uint64).item()
    mx.random.seed(cast(int, seed))


def agreement(group: mx.distributed.Group):
    """`agree(ok) -> bool`: True where every rank passes True (each rank calls it at the same
    point), so choices made from a rank's own layers are the same everywhere."""

    def agree(ok: bool) -> bool:
        missing = mx.distributed.all_sum(mx.array(int(not ok)), group=group, stream=mx.cpu)
        return missing.item() == 0

    return agree


def barrier(group: mx.distributed.Group) -> None:
    """Wait until every rank gets here (before a rank exits, so none is left sending)."""
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


def plan_split(num_layers: int, weights: list[float]) -> list[int]:
    """Layers per rank in proportion to `weights` (e.g. each host's memory), at least one each:
    a `split` for `pipeline`."""
    if len(weights) > num_layers:
        raise ValueError(f"{len(weights)} ranks cannot split {num_layers} layers")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    total = sum(weights)
    shares = [(num_layers - len(weights)) * w / total for w in weights]
    layers = [1 + int(s) for s in shares]
    # The layers left go to the largest remainders.
    order = sorted(range(len(weights)), key=lambda i: shares[i] - int(shares[i]), reverse=True)
    for i in order[: num_layers - sum(layers)]:
        layers[i] += 1
    return layers
