"""Write a synthetic MoE checkpoint that the unmodified `mlx_lm.load(path)` loads."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _get_classes, get_total_parameters, quantize_model, save_config

from moe_testing._families import FAMILY
from moe_testing._layout import cut_layer, shard_of, to_hf
from moe_testing._spec import PER_EXPERT_LAYOUTS, QUANT_BITS, QUANT_GROUP_SIZE, CheckpointSpec
from moe_testing._tokenizer import write_tokenizer
from moe_testing._weights import calibrate, init_weights

_NUM_SHARDS = 2


def build_checkpoint(spec: CheckpointSpec, out_dir: str | os.PathLike[str]) -> Path:
    """Write the checkpoint `spec` describes to `out_dir / spec.name` and return that directory.

    The directory holds `config.json`, `model.safetensors.index.json`, the shards
    `model-0000{1,2}-of-00002.safetensors`, `tokenizer.json` and `tokenizer_config.json`.
    """
    family = FAMILY[spec.family]
    geometry = spec.geometry
    hf_form = spec.layout in PER_EXPERT_LAYOUTS
    dtype = mx.float32 if spec.precision == "f32" else mx.bfloat16
    config = spec.config() | {"torch_dtype": "float32" if dtype == mx.float32 else "bfloat16"}

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    init_weights(model, seed=spec.seed)
    # On the CPU, in float32, so the result does not depend on the device.
    with mx.stream(mx.cpu):
        calibrate(model, family, seed=spec.seed, skew=spec.skew)
    _cast(model, dtype)
    if spec.quantized:
        # mlx_lm.convert's own step, with the model's quant_predicate (8-bit routers).
        with contextlib.redirect_stdout(io.StringIO()):
            model, config = quantize_model(
                model, config, QUANT_GROUP_SIZE, QUANT_BITS[spec.precision], mode="affine"
            )

    weights = dict(tree_flatten(model.parameters()))
    if hf_form:
        weights = to_hf(weights, family, config)
    cut = cut_layer(spec.layout, family.moe_layers(model), geometry.num_layers)
    shards: list[dict[str, mx.array]] = [{} for _ in range(_NUM_SHARDS)]
    for name in sorted(weights):
        i = shard_of(name, layout=spec.layout, cut=cut, num_experts=geometry.num_experts)
        shards[i][name] = weights[name]

    model_dir = Path(out_dir) / spec.name
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_shards(model_dir, shards, hf_form=hf_form, total_parameters=get_total_parameters(model))
    if hf_form:
        # transformers' `save_pretrained` writes sorted keys with an indent of 2.
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        (model_dir / "config.json").write_text(text, encoding="utf-8")
    else:
        save_config(config, model_dir / "config.json")
    write_tokenizer(model_dir)
    return model_dir


def reference_model(path: str | os.PathLike[str]) -> tuple[nn.Module, TokenizerWrapper]:
    """The unmodified mlx-lm model and tokenizer of a checkpoint: `mlx_lm.load(str(path))`."""
    model, tokenizer, *_ = mlx_lm.load(str(path))
    return model, tokenizer


def _cast(model: nn.Module, dtype: mx.Dtype) -> None:
    # As mlx_lm.convert casts to the config's torch_dtype, keeping what the model exempts
    # (DeepSeek's e_score_correction_bias stays float32).
    keep = getattr(model, "cast_predicate", lambda _: True)

    def cast(path: str, w: mx.array) -> mx.array:
        return w.astype(dtype) if keep(path) and mx.issubdtype(w.dtype, mx.floating) else w

    model.update(tree_map_with_path(cast, model.parameters()))


def _write_shards(
    model_dir: Path, shards: list[dict[str, mx.array]], *, hf_form: bool, total_parameters: int
) -> None:
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        # The original checkpoints come from torch, the stacked ones from mlx-lm's save.
        metadata = {"format": "pt" if hf_form else "mlx"}
        mx.save_safetensors(str(model_dir / file), shard, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))

    total_size = sum(w.nbytes for shard in shards for w in shard.values())
    index: dict[str, Any]
    if hf_form:
        index = {
            "metadata": {"total_size": total_size},
            "weight_map": dict(sorted(weight_map.items())),
        }
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    else:
        sizes = {"total_size": total_size, "total_parameters": total_parameters}
        index = {"metadata": sizes, "weight_map": dict(sorted(weight_map.items()))}
        text = json.dumps(index, indent=4)
    (model_dir / "model.safetensors.index.json").write_text(text, encoding="utf-8")
