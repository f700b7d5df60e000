"""Kernel warm-up on CUDA: MLX compiles each kernel variant (NVRTC) the first time a process runs
it and keeps the result in a disk cache; on a fresh machine the first request waited minutes for
those compiles, one after another, with the GPU idle (H200: 140-170 s).

`start` runs a copy of the model's architecture, a few layers and experts with random weights
(kernels are compiled per variant: dtypes, quantization, code path; not per shape), in helper
processes, one per phase (prefill and decode, unmodified and offloaded), side by side while the
model loads; the first offloaded layer waits for them (`join`) and then finds every variant in
the cache. A marker in the cache records that a model's variants are there, so later starts
skip it. The cache lives under the user's cache directory unless `MLX_PTX_CACHE_DIR` says
otherwise (MLX's own default is the temporary directory, which a reboot may empty).

Run as a script (`python -m moe_core._warmup SPEC PHASE`) it is one helper.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

PHASES = ("prefill", "decode", "moe-prefill", "moe-decode")
_LAYERS = 4  # enough for every layer kind of a hybrid model (Qwen3-Next: 3 linear, 1 full)
_EXPERTS = 16
_VOCAB = 4096
_PROMPT = 512  # tokens of the prefill phases: the sorted expert kernels' path
_HELPER_BYTES = 2 << 30  # GPU memory one helper may take (its context and tiny model)


def kernel_cache_dir() -> Path:
    """Where MLX keeps compiled CUDA kernels for this process."""
    import mlx.core as mx

    given = os.environ.get("MLX_PTX_CACHE_DIR")
    if given:
        return Path(given)
    return Path(tempfile.gettempdir()) / "mlx" / _mlx_version(mx) / "ptx"


def persist_kernel_cache() -> None:
    """Keep MLX's compiled kernels under the user's cache directory (unless the caller chose a
    place): MLX reads the variable when it first compiles."""
    if os.environ.get("MLX_PTX_CACHE_DIR"):
        return
    import mlx.core as mx

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    os.environ["MLX_PTX_CACHE_DIR"] = str(base / "moe" / "mlx-kernels" / _mlx_version(mx))


class Warmup:
    """Helper processes compiling a model's kernel variants; `join` waits for them."""

    def __init__(self, processes: list[subprocess.Popen], marker: Path, spec: Path) -> None:
        self.processes = processes
        self.marker = marker
        self.spec = spec
        self.started = time.perf_counter()
        self.seconds: float | None = None  # how long the first layer waited, once joined
        self.failed: list[str] = []

    def join(self) -> None:
        if self.seconds is not None:
            return
        start = time.perf_counter()
        for phase, process in zip(PHASES, self.processes, strict=False):
            _, err = process.communicate()
            if process.returncode:
                self.failed.append(f"{phase}: {err.decode(errors='replace').strip()[-300:]}")
        self.seconds = time.perf_counter() - start
        self.spec.unlink(missing_ok=True)
        if self.failed:
            warnings.warn(
                "kernel warm-up failed (kernels compile on first use instead): "
                + "; ".join(self.failed),
                stacklevel=2,
            )
        else:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(json.dumps({"seconds": time.perf_counter() - self.started}))


def start(model_path: Path, *, helpers: int | None = None) -> Warmup | None:
    """Start compiling the kernel variants of the model at `model_path` in helper processes,
    unless the cache already has them or the GPU has no room for the helpers."""
    import mlx.core as mx

    config = json.loads((Path(model_path) / "config.json").read_text())
    cache = kernel_cache_dir()
    marker = cache / f"moe-warm-{_signature(config, _mlx_version(mx))}.json"
    if marker.exists():
        return None
    count = len(PHASES) if helpers is None else helpers
    free = int(mx.device_info().get("free_memory", 0))
    if count < 1 or free < (count + 1) * _HELPER_BYTES:
        return None
    spec = Path(tempfile.mkstemp(prefix="moe-warmup-", suffix=".json")[1])
    spec.write_text(json.dumps({"path": str(model_path), "config": config}))
    env = dict(os.environ, MLX_PTX_CACHE_DIR=str(cache), MOE_WARMUP_HELPER="1")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "moe_core._warmup", str(spec), phase],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for phase in PHASES[:count]
    ]
    return Warmup(processes, marker, spec)


def _signature(config: dict, version: str) -> str:
    """What decides a model's kernel variants: its config without the sizes."""
    sizes = ("num_hidden_layers", "num_experts", "n_routed_experts", "vocab_size")
    kept = {k: v for k, v in sorted(config.items()) if k not in sizes}
    text = json.dumps([version, kept], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tiny_model(spec: dict, out: Path):
    """The architecture at a few layers and experts, random weights of the checkpoint's dtype
    and quantization, saved to `out` and loaded lazily as mlx-lm loads a checkpoint."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes, load_model

    from ._safetensors import read_tensor_table

    config = dict(spec["config"])
    layers = min(config.get("num_hidden_layers", _LAYERS), _LAYERS)
    config["num_hidden_layers"] = layers
    for key in ("num_experts", "n_routed_experts", "num_local_experts"):
        if isinstance(config.get(key), int):
            top_k = int(config.get("num_experts_per_tok") or config.get("top_k") or 1)
            config[key] = min(config[key], max(_EXPERTS, 2 * top_k))
    config["vocab_size"] = min(config.get("vocab_size", _VOCAB), _VOCAB)
    for key in ("mlp_only_layers",):
        if isinstance(config.get(key), list):
            config[key] = [i for i in config[key] if i < layers]
    table = read_tensor_table(Path(spec["path"]))
    floats = [e.dtype for e in table.values() if e.dtype in ("BF16", "F16", "F32")]
    dtype = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}[
        max(set(floats), key=floats.count) if floats else "F32"
    ]
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(dtype)
    quantization = config.get("quantization")
    if quantization:
        names = set(table)

        def quantized(path, module):
            if path in quantization:  # a module's own settings, as mlx-lm saves them
                return quantization[path]
            return hasattr(module, "to_quantized") and f"{path}.scales" in names

        nn.quantize(
            model,
            group_size=quantization["group_size"],
            bits=quantization["bits"],
            mode=quantization.get("mode", "affine"),
            class_predicate=quantized,
        )
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config))
    model, _ = load_model(out, lazy=True)
    return model, config


def _run(spec_path: str, phase: str) -> None:
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    spec = json.loads(Path(spec_path).read_text())
    with tempfile.TemporaryDirectory(prefix="moe-warmup-") as tmp:
        model, config = _tiny_model(spec, Path(tmp))
        top_k = int(config.get("num_experts_per_tok") or config.get("top_k") or 1)
        if phase.startswith("moe"):
            import moe_core

            capacity = top_k if phase == "moe-prefill" else None
            moe_core.offload(model, tmp, capacity=capacity, host_memory=0, lookahead=True)
        mx.eval(model.parameters())
        vocab = int(config["vocab_size"])
        tokens = mx.arange(_PROMPT) % (vocab - 3) + 3
        cache = make_prompt_cache(model)
        if phase.endswith("prefill"):
            mx.eval(model(tokens[None], cache=cache))
            return
        logits = model(tokens[None, :8], cache=cache)
        for _ in range(4 if phase == "decode" else 40):  # moe: long enough to fill every slot
            logits = model(mx.argmax(logits[:, -1:], axis=-1), cache=cache)
            mx.eval(logits)


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2])


def _mlx_version(mx) -> str:
    """MLX's version, which names its kernel cache (mlx.core declares no `__version__` stub)."""
    return str(getattr(mx, "__version__", "unknown"))
