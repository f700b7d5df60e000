"""Seeded random weights for an mlx-lm model, and routers tuned to a chosen skew.

Every tensor is drawn by numpy from its own stream, keyed by (seed, tensor name), so a tensor
does not change when another one is added or resized, and the bytes do not depend on MLX's
random generator or device.
"""

from __future__ import annotations

import zlib
from typing import cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from moe_testing._families import Family
from moe_testing._routing import capture_inputs, random_tokens

# Tokens the routers are calibrated on: enough for their input's mean to a few percent.
_CALIBRATION_TOKENS = 512


def _rng(seed: int, key: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode()), *more])


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float) -> np.ndarray:
    w = rng.random(shape, dtype=np.float32)  # U[0, 1), scaled in place: experts can be large
    w *= np.float32(2 * bound)
    w -= np.float32(bound)
    return w


def _draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values like the model's own initializers, so activations stay of order one."""
    rng = _rng(seed, name)
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("norm.weight") or leaf == "dt_bias":
        return np.ones(shape, np.float32)
    if leaf == "A_log":
        # Qwen3-Next's linear attention decay, A ~ U(1, 16) as in its reference init.
        return np.log(rng.uniform(1, 16, shape)).astype(np.float32)
    if leaf in ("bias", "e_score_correction_bias"):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if leaf == "sinks":
        return rng.standard_normal(shape, dtype=np.float32)
    if name.endswith("embed_tokens.weight"):
        # Rows of norm ~1 around a shared unit direction: real models' embeddings share
        # one too, and it gives every layer's input a mean the routers can lean on.
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(shape[-1] ** -0.5)
        mean = _rng(seed, "mean_direction").standard_normal(shape[-1]).astype(np.float32)
        return noise + mean / np.linalg.norm(mean)
    # Linear, SwitchLinear, MultiLinear: [..., out, in]. Conv1d: [C, K, 1].
    fan_in = shape[-2] * shape[-1] if "conv1d" in name else shape[-1]
    return _uniform(rng, shape, fan_in**-0.5)


def init_weights(model: nn.Module, *, seed: int) -> None:
    weights = [
        (name, mx.array(_draw(name, tuple(p.shape), seed)))
        for name, p in cast("list[tuple[str, mx.array]]", tree_flatten(model.parameters()))
    ]
    model.load_weights(weights, strict=True)


def skew_bias(num_experts: int, skew: float, *, seed: int, layer: int) -> np.ndarray:
    """Per-expert router logit offsets: the expert of popularity rank r (from 1) gets
    -skew * log(r), centred, so popularity falls off like a power of the rank, Zipf-like.
    Which experts are hot is a seeded permutation, different per layer."""
    order = _rng(seed, "skew", layer).permutation(num_experts)  # [E], hottest first
    bias = np.empty(num_experts, np.float32)
    bias[order] = -skew * np.log(np.arange(1, num_experts + 1, dtype=np.float32))
    return bias - bias.mean()


def calibrate(model: nn.Module, family: Family, *, seed: int, skew: float) -> None:
    """Make each router's preference the chosen skew, from one forward pass.

    A router's input has a mean direction mu over tokens (from the shared embedding
    direction), which by chance favours some experts for every token. Each router row is
    made orthogonal to mu, then given `skew_bias` along it: expert e's logit moves by
    bias_e * (x . mu) / |mu|^2, which is bias_e on average. With skew 0 no expert is
    favoured. The LM head is made orthogonal to its input's mean likewise, so no token is.
    """
    tokens = random_tokens(model.args.vocab_size, _CALIBRATION_TOKENS, 64, seed)
    layers = family.moe_layers(model)
    blocks = [family.moe_block_of(model, i) for i in layers]
    switches = [block[family.experts] for block in blocks]
    for block, switch in zip(blocks, switches, strict=True):
        block[family.experts] = _NumpyExperts(switch)
    try:
        targets = [(block, family.router) for block in blocks] + [(model, "lm_head")]
        inputs = capture_inputs(model, targets, tokens)  # each [N, D]
    finally:
        for block, switch in zip(blocks, switches, strict=True):
            block[family.experts] = switch

    # All routers at once from one pass: a router's change moves the later layers' inputs
    # only a little, too little to show in the measured shares.
    weights = dict(tree_flatten(model.parameters()))
    updates = []
    for layer, x in zip(layers, inputs, strict=False):
        name = family.router_weight(layer)
        mu = x.mean(0)
        w = _lean(np.array(weights[name]), mu, 0)  # [E, D]
        # In units of the logits' spread over tokens, so skew means the same at any size.
        spread = np.float32(_matmul_t(x, w).std())
        bias = spread * skew_bias(w.shape[0], skew, seed=seed, layer=layer)
        updates.append((name, _lean(w, mu, bias)))
    head = np.array(weights["lm_head.weight"])  # [V, D]
    updates.append(("lm_head.weight", _lean(head, inputs[-1].mean(0), 0)))
    model.load_weights([(name, mx.array(w)) for name, w in updates], strict=False)


class _NumpyExperts:
    """SwitchGLU's forward with the expert matmuls in numpy.

    Calibration only measures, and MLX's CPU matmul on Linux is slow enough to make a
    checkpoint with large experts take many seconds to build.
    """

    def __init__(self, switch: nn.Module):
        self._activation = switch.activation
        # [E, out, in] weights and [E, out] biases of gate_proj, up_proj, down_proj.
        self._projections = [
            (np.array(p.weight), np.array(p.bias) if "bias" in p else None)
            for p in (switch.gate_proj, switch.up_proj, switch.down_proj)
        ]

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        (wg, bg), (wu, bu), (wd, bd) = self._projections
        xs = np.array(x.astype(mx.float32)).reshape(-1, x.shape[-1])  # [N, D]
        inds = np.array(indices).reshape(xs.shape[0], -1)  # [N, k]
        out = np.zeros((*inds.shape, xs.shape[-1]), np.float32)  # [N, k, D]
        for e in np.unique(inds):
            n, j = np.nonzero(inds == e)
            gate, up = _matmul_t(xs[n], wg[e]), _matmul_t(xs[n], wu[e])  # [n_e, I]
            if bg is not None and bu is not None:
                gate, up = gate + bg[e], up + bu[e]
            h = np.array(self._activation(mx.array(up), mx.array(gate)))
            out[n, j] = _matmul_t(h, wd[e]) + (bd[e] if bd is not None else 0)
        return mx.array(out).reshape(*indices.shape, -1)


def _lean(w: np.ndarray, mu: np.ndarray, bias: np.ndarray | float) -> np.ndarray:
    """Rows of `w` [N, D] with their part along `mu` [D] replaced by `bias` [N] / |mu|^2."""
    mu = mu.astype(np.float32)
    inv = mu / np.float32(mu @ mu)
    return (w - np.outer(_matmul_t(w, inv[None])[:, 0], mu) + np.outer(bias, inv)).astype(
        np.float32
    )


def _matmul_t(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [N, D] @ b[M, D].T without BLAS: its threads can crawl on a busy machine, and one
    thread gives the same bits on any number of cores."""
    return np.einsum("nd,md->nm", a, b)
