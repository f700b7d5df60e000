"""Bench checkpoints: the Qwen3-Coder-Next geometry (qwen3_next family: hybrid linear attention
every 3 of 4 layers, a shared expert, 512 experts of ~1.7 MB each at 4 bits, top-10) with as many
layers as asked, built in about the time it takes to write the bytes.

The model class is instantiated lazily and quantized lazily; expert tensors are never evaluated:
their bytes are random (the values do not matter to speed), written straight into the shards.
Random routers route almost uniformly, unlike trained ones, so each MoE layer's router rows are
scaled by a Zipf-like factor over a per-layer random permutation of the experts: a few experts
take most routings, as in real models (the bench measures and reports the actual share)."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

QWEN3_CODER_NEXT = dict(
    model_type="qwen3_next",
    hidden_size=2048,
    num_hidden_layers=48,
    intermediate_size=5120,
    num_attention_heads=16,
    num_key_value_heads=2,
    head_dim=256,
    linear_num_value_heads=32,
    linear_num_key_heads=16,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
    num_experts=512,
    num_experts_per_tok=10,
    decoder_sparse_step=1,
    shared_expert_intermediate_size=512,
    mlp_only_layers=[],
    moe_intermediate_size=512,
    rms_norm_eps=1e-6,
    vocab_size=151936,
    rope_theta=5000000.0,
    partial_rotary_factor=0.25,
    max_position_embeddings=262144,
    norm_topk_prob=True,
    tie_word_embeddings=False,
    full_attention_interval=4,
)

_ST = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "uint32": "U32", "int32": "I32"}
_SHARD_BYTES = 4 << 30
_POOL_BYTES = 64 << 20  # random bytes reused at random offsets: writing is the cost, not the RNG


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """What a bench checkpoint is; its hash names its cache directory."""

    layers: int = 6
    scales: str = "float32"  # "float32" | "bfloat16"; see the JSON's `scales` entry for why
    zipf: float = 0.1  # router skew: row e of the gate scaled by (rank+1)**-zipf
    vocab_size: int = 8192
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # config keys to change (tests: tiny models)

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        if self.scales not in ("float32", "bfloat16"):
            raise ValueError(f"scales must be float32 or bfloat16, got {self.scales!r}")
        if self.zipf < 0:
            raise ValueError(f"zipf must be >= 0, got {self.zipf}")

    def config(self) -> dict:
        cfg = dict(QWEN3_CODER_NEXT, num_hidden_layers=self.layers, vocab_size=self.vocab_size)
        cfg.update(self.overrides)
        return cfg

    def key(self) -> str:
        text = json.dumps({**asdict(self), "config": self.config(), "v": 1}, sort_keys=True)
        return f"qwen3_next-{self.layers}L-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def bench_checkpoint(spec: BenchSpec, cache_dir: Path, log=print) -> Path:
    """The checkpoint for `spec` under `cache_dir`, built on first use."""
    path = Path(cache_dir) / "checkpoints" / spec.key()
    if (path / "bench.json").exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"building bench checkpoint {path.name} ...")
    info = write_checkpoint(spec, tmp)
    (tmp / "bench.json").write_text(json.dumps({"spec": asdict(spec), **info}, indent=2))
    tmp.rename(path)
    return path


def write_checkpoint(spec: BenchSpec, out: Path) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3_next

    cfg = spec.config()
    mx.random.seed(spec.seed)
    model = qwen3_next.Model(qwen3_next.ModelArgs.from_dict(cfg))
    rng = np.random.default_rng(spec.seed)
    for layer in model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is None:
            continue
        num = gate.weight.shape[0]
        scale = np.empty(num, dtype=np.float32)
        scale[rng.permutation(num)] = (np.arange(num) + 1.0) ** -spec.zipf
        gate.weight = gate.weight * mx.array(scale)[:, None]
    quant = {"group_size": 64, "bits": 4}

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        if path.endswith("mlp.gate") or path.endswith("shared_expert_gate"):
            quant[path] = {"group_size": 64, "bits": 8}
            return quant[path]
        return True

    nn.quantize(model, 64, 4, class_predicate=predicate)
    scale_dtype = mx.float32 if spec.scales == "float32" else mx.bfloat16
    pool = rng.integers(0, 2**32, size=_POOL_BYTES // 4, dtype=np.uint32).view(np.uint8)
    params = tree_flatten(model.parameters())
    shards: list[list[tuple[str, object]]] = [[]]
    size = 0
    for name, arr in params:
        if size > _SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, arr))
        size += arr.nbytes
    index, expert_bytes = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        expert_bytes += _write_shard(out / fname, shard, pool, rng, scale_dtype)
        index.update({name: fname for name, _ in shard})
    total = sum(arr.nbytes for _, arr in params)
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1)
    )
    (out / "config.json").write_text(json.dumps({**cfg, "quantization": quant}, indent=1))
    write_tokenizer(out, cfg["vocab_size"])
    return {"expert_bytes": expert_bytes, "total_bytes": total, "shards": len(shards)}


def _write_shard(path: Path, params, pool, rng, scale_dtype) -> int:
    import mlx.core as mx

    header, offset, expert_bytes = {}, 0, 0
    for name, arr in params:
        dtype = arr.dtype
        if ".switch_mlp." in name and dtype != mx.uint32:
            dtype = scale_dtype
        nbytes = arr.size * dtype.size
        header[name] = {
            "dtype": _ST[str(dtype).rsplit(".", 1)[-1]],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, arr in params:
            if ".switch_mlp." in name:
                expert_bytes += _write_expert_tensor(f, arr, pool, rng, header[name]["dtype"])
            else:
                mx.eval(arr)
                view = arr.view(mx.uint16) if arr.dtype == mx.bfloat16 else arr
                f.write(np.array(view).tobytes())
    return expert_bytes


def _write_expert_tensor(f, arr, pool, rng, dtype: str) -> int:
    """Random packed weights; small, finite scales and biases (so activations stay finite)."""
    import mlx.core as mx

    if arr.dtype == mx.uint32:
        nbytes, left = arr.nbytes, arr.nbytes
        while left:
            n = min(left, len(pool) // 2)
            start = int(rng.integers(0, len(pool) - n + 1)) & ~3
            f.write(pool[start : start + n].data)
            left -= n
        return nbytes
    value = np.full(arr.shape, 2**-10, dtype=np.float32)
    if dtype == "BF16":
        data = (value.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    else:
        data = value.tobytes()
    f.write(data)
    return len(data)


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer over `vocab_size` made-up words: prompts are random token ids, so
    all it must do is load in mlx-lm and decode ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(vocab_size)}
    vocab["<unk>"], vocab["<|endoftext|>"] = 0, 1
    del vocab["w0"], vocab["w1"]
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
