"""Turn the trained checkpoint into the shipped demo model: MLX, 4-bit affine, group size 64,
with float32 scales and biases.

    uv run python training/convert.py CHECKPOINT_DIR

runs mlx-lm's own `convert` on the checkpoint train.py wrote, replaces the model files in
packages/moe-runtime/src/moe_runtime/demo/ with the result, and prints a greedy continuation of
`def fibonacci(n):` from the shipped files. The weights are cast to float32 before quantizing, so
the scales, biases and norms are float32: MLX's CPU kernels run bfloat16 and float16 scales several
times slower (benchmarks/demo_formats.py measures each stored format).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[1] / "packages/moe-runtime/src/moe_runtime/demo"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
SHIPPED = ("config.json", "model.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()

    from mlx_lm import convert, generate, load

    with tempfile.TemporaryDirectory() as tmp:
        mlx_path = Path(tmp) / "mlx"
        convert(
            hf_path=str(args.checkpoint),
            mlx_path=str(mlx_path),
            quantize=True,
            q_bits=args.bits,
            q_group_size=args.group_size,
            q_mode="affine",
            dtype=args.dtype,
        )
        # The tokenizer files as train.py wrote them: re-saved by transformers 5 they name a
        # tokenizer class older versions lack. generation_config.json holds both stop tokens.
        for name in TOKENIZER_FILES:
            shutil.copy(args.checkpoint / name, mlx_path / name)
        (mlx_path / "chat_template.jinja").unlink(missing_ok=True)  # in tokenizer_config.json
        (mlx_path / "README.md").unlink(missing_ok=True)  # mlx-lm's model card template
        args.out.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            (args.out / name).unlink(missing_ok=True)
            if (mlx_path / name).exists():
                shutil.copy(mlx_path / name, args.out / name)
        # mlx-lm keeps the checkpoint's torch_dtype; say what the stored weights are.
        config = json.loads((mlx_path / "config.json").read_text())
        config["torch_dtype"] = args.dtype
        (mlx_path / "config.json").write_text(json.dumps(config, indent=4) + "\n")
        extra = sorted(p.name for p in mlx_path.iterdir() if p.name not in SHIPPED)
        if extra:
            raise SystemExit(f"mlx-lm wrote files this script does not ship: {extra}")

    model, tokenizer = load(str(args.out))
    print(generate(model, tokenizer, "def fibonacci(n):", max_tokens=80))


if __name__ == "__main__":
    main()
