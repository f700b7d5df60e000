"""Checkpoints as large as a benchmark needs (tens of GB), written in about the time their bytes
take: the non-expert weights come from mlx-lm's own model class (its initialisation, quantized as
`mlx_lm.convert` does), the expert tensors are random bytes written straight into the shards and
never materialised. Their values mean nothing; their sizes, names and layout are the real ones.

Random routers route almost uniformly, unlike trained ones, so the routing can be skewed: `skew`
calibrates a shared direction in the embeddings and per-expert router offsets along it until the
busiest 20% of the first MoE layer's experts take that share of its routings; `zipf` scales each
router row by `(rank + 1) ** -zipf` over a per-layer permutation of the experts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from moe_testing._families import FAMILY

# Qwen3-Coder-Next (qwen3_next: linear attention in 3 of 4 layers, a shared expert, 512 experts of
# ~1.77 MB at 4 bits, top-10), as its config.json has it.
QWEN3_CODER_NEXT = dict(
    model_type="qwen3_next", hidden_size=2048, num_hidden_layers=48, intermediate_size=5120,
    num_attention_heads=16, num_key_value_heads=2, head_dim=256, linear_num_value_heads=32,
    linear_num_key_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4, num_experts=512, num_experts_per_tok=10, decoder_sparse_step=1,
    shared_expert_intermediate_size=512, mlp_only_layers=[], moe_intermediate_size=512,
    rms_norm_eps=1e-6, vocab_size=151936, rope_theta=5000000.0, partial_rotary_factor=0.25,
    max_position_embeddings=262144, norm_topk_prob=True, tie_word_embeddings=False,
    full_attention_interval=4,
)  # fmt: skip

_ST = {"uint32": "U32", "bfloat16": "BF16", "float32": "F32", "float16": "F16"}
_POOL_WORDS = 16 << 20  # 64 MB of random words, reused at random offsets: writing is the cost
_SCALE = 2.0**-10  # experts' quantization scales; biases of -7.5 scales centre the weights on 0


@dataclass(frozen=True, slots=True)
class BulkSpec:
    """One bulk checkpoint: an HF config (`model_type` included), 4-bit, in `dtype`."""

    config: Mapping[str, object] | tuple[tuple[str, str], ...]
    dtype: str = "bfloat16"  # non-expert weights and every scale; MLX's CPU kernels want float32
    skew: float | None = None  # share of the first MoE layer's routings the top 20% take
    zipf: float = 0.0
    seed: int = 0
    shard_bytes: int = 4 << 30

    def __post_init__(self) -> None:
        if isinstance(self.config, Mapping):
            pairs = tuple(sorted((str(k), json.dumps(v)) for k, v in self.config.items()))
            object.__setattr__(self, "config", pairs)
        config = self.hf_config()
        if config.get("model_type") not in FAMILY:
            raise ValueError(
                f"model_type must be one of {sorted(FAMILY)}, got {config.get('model_type')!r}"
            )
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be bfloat16 or float32, got {self.dtype!r}")
        if self.skew is not None and not 0.2 <= self.skew < 1:
            raise ValueError(f"skew is a share of routings in [0.2, 1), got {self.skew}")
        if self.zipf < 0:
            raise ValueError(f"zipf must be >= 0, got {self.zipf}")

    def hf_config(self) -> dict:
        assert isinstance(self.config, tuple)
        return {k: json.loads(v) for k, v in self.config}

    @property
    def name(self) -> str:
        """`qwen3_next-6L-<hash>`: a directory name that tells the specs apart."""
        config = self.hf_config()
        text = json.dumps([self.config, self.dtype, self.skew, self.zipf, self.seed, "v1"])
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{config['model_type']}-{config['num_hidden_layers']}L-{digest}"


def build_bulk_checkpoint(spec: BulkSpec, path: str | os.PathLike[str]) -> Path:
    """Write the checkpoint to `path` (built beside it and renamed into place, so a directory
    there is always complete) and return it; a checkpoint of the same spec there is kept."""
    path = Path(path)
    marker = path / "bulk.json"
    if marker.exists() and json.loads(marker.read_text()).get("name") == spec.name:
        return path
    tmp = path.with_name(f".{path.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info = _write(spec, tmp)
    (tmp / "bulk.json").write_text(json.dumps({"name": spec.name, **info}, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _write(spec: BulkSpec, out: Path) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes, quantize_model

    config = spec.hf_config()
    family = FAMILY[config["model_type"]]
    mx.random.seed(spec.seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    dtype = mx.bfloat16 if spec.dtype == "bfloat16" else mx.float32
    model.set_dtype(dtype)
    rng = np.random.default_rng(spec.seed)
    if spec.skew is not None:
        _skew(model, family, spec.skew, rng)
    if spec.zipf:
        _zipf(model, family, spec.zipf, rng)
    # mlx_lm.convert's own step (8-bit routers), lazily: experts are never computed.
    with contextlib.redirect_stdout(io.StringIO()):
        model, config = quantize_model(model, config, 64, 4, mode="affine")
    # mlx types tree_flatten's result as a list or a dict; with no destination it is the list.
    params = cast("list[tuple[str, Any]]", tree_flatten(model.parameters()))

    shards: list[list[tuple[str, Any]]] = [[]]
    size = 0
    for name, arr in params:
        if size + arr.nbytes > spec.shard_bytes and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, arr))
        size += arr.nbytes
    pool = rng.integers(0, 2**32, size=_POOL_WORDS, dtype=np.uint32).view(np.uint8)
    weight_map, expert_bytes = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        expert_bytes += _write_shard(out / file, shard, pool, rng)
        weight_map.update(dict.fromkeys((name for name, _ in shard), file))
    total = sum(arr.nbytes for _, arr in params)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    write_word_tokenizer(out, config["vocab_size"])
    return {"expert_bytes": expert_bytes, "total_bytes": total, "shards": len(shards)}


def _is_expert(name: str) -> bool:
    return ".switch_mlp." in name or ".experts." in name


def _write_shard(path: Path, params, pool: np.ndarray, rng: np.random.Generator) -> int:
    import mlx.core as mx

    header: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in params:
        dtype = _ST[str(arr.dtype).rsplit(".", 1)[-1]]
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}  # fmt: skip
        offset += arr.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    expert_bytes = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, arr in params:
            if _is_expert(name):
                _write_expert(f, name, arr.nbytes, header[name]["dtype"], pool, rng)
                expert_bytes += arr.nbytes
            else:
                mx.eval(arr)
                view = arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr
                f.write(np.array(view).tobytes())
    return expert_bytes


def _write_expert(f, name: str, nbytes: int, dtype: str, pool, rng) -> None:
    """Random packed weights; scales of 2^-10 and biases of -7.5 scales, so the 4-bit weights
    centre on zero (biases equal to the scales make every weight positive: every expert then adds
    the same direction to each token, and later layers' routers all pick the same few experts)."""
    if dtype != "U32":
        value = _SCALE if name.endswith("scales") else -7.5 * _SCALE
        data = np.full(nbytes // (2 if dtype == "BF16" else 4), value, dtype=np.float32)
        if dtype == "BF16":
            data = (data.view(np.uint32) >> 16).astype(np.uint16)
        f.write(data.tobytes())
        return
    while nbytes:
        start = int(rng.integers(0, pool.size // 2)) & ~3
        n = min(nbytes, pool.size - start)
        f.write(pool[start : start + n].data)
        nbytes -= n


def _routers(model, family) -> list:
    return [family.moe_block_of(model, i)[family.router] for i in family.moe_layers(model)]


def _zipf(model, family, zipf: float, rng: np.random.Generator) -> None:
    import mlx.core as mx

    for gate in _routers(model, family):
        num = gate.weight.shape[0]
        scale = np.empty(num, dtype=np.float32)
        scale[rng.permutation(num)] = (np.arange(num) + 1.0) ** -zipf
        gate.weight = gate.weight * mx.array(scale)[:, None].astype(gate.weight.dtype)


def _skew(model, family, target: float, rng: np.random.Generator) -> None:
    """A shared direction in every token's embedding and per-expert router offsets along it,
    scaled until the top 20% of the first MoE layer's experts take `target` of its routings."""
    import mlx.core as mx

    hidden = model.args.hidden_size
    direction = rng.standard_normal(hidden).astype(np.float32)
    direction /= np.linalg.norm(direction)
    embed = model.model.embed_tokens.weight
    model.model.embed_tokens.weight = embed + mx.array(direction * 0.05).astype(embed.dtype)
    routers = _routers(model, family)
    experts = routers[0].weight.shape[0]
    offsets = -np.log(rng.permutation(experts) + 1).astype(np.float32)
    top_k = model.args.num_experts_per_tok
    scale = _calibrate(model, routers[0], direction, offsets, top_k, target)
    for gate in routers:
        bump = mx.array(scale * offsets[:, None] * direction[None, :]).astype(gate.weight.dtype)
        gate.weight = gate.weight + bump


def _calibrate(model, router, direction, offsets, top_k: int, target: float) -> float:
    """The offset scale at which the busiest 20% of experts take `target` of the routings of the
    (normalised) embeddings of 4096 random tokens."""
    import mlx.core as mx

    experts = offsets.size
    ids = mx.array(np.random.default_rng(1).integers(0, model.args.vocab_size, size=4096))
    x = model.model.embed_tokens(ids).astype(mx.float32)
    x = x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-6)
    base = np.array(x @ router.weight.astype(mx.float32).T)
    along = np.array(x @ mx.array(direction))[:, None] * offsets[None, :]

    def share(scale: float) -> float:
        picks = np.argpartition(-(base + scale * along), top_k, axis=-1)[:, :top_k]
        counts = np.sort(np.bincount(picks.ravel(), minlength=experts))[::-1]
        return counts[: experts // 5].sum() / counts.sum()

    low, high = 0.0, 1.0
    while share(high) < target and high < 1e6:
        high *= 2
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if share(mid) < target else (low, mid)
    return high


def write_word_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer over `vocab_size` made-up words: prompts of bulk checkpoints are
    random token ids, so all it must do is load in mlx-lm and decode ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(2, vocab_size)}
    vocab["<unk>"], vocab["<|endoftext|>"] = 0, 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "unk_token": "<unk>",
                "model_max_length": 1 << 20,
            }
        )
    )
