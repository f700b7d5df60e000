"""Turn the trained checkpoint into the shipped demo model: MLX, 4-bit affine, group size 64.

    uv run python training/convert.py CHECKPOINT_DIR

runs mlx-lm's own `convert` on the checkpoint train.py wrote, replaces the model files in
packages/moe-runtime/src/moe_runtime/demo/ with the result, and prints a greedy continuation of
`def fibonacci(n):` from the shipped files.
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()

    from mlx_lm import convert, generate, load

    with tempfile.TemporaryDirectory() as tmp:
        mlx_path = Path(tmp) / "mlx"
        convert(
            hf_path=str(args.checkpoint),
            mlx_path=str(mlx_path),
            quantize=True,
            q_bits=4,
            q_group_size=64,
            q_mode="affine",
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
        extra = sorted(p.name for p in mlx_path.iterdir() if p.name not in SHIPPED)
        if extra:
            raise SystemExit(f"mlx-lm wrote files this script does not ship: {extra}")

    model, tokenizer = load(str(args.out))
    print(generate(model, tokenizer, "def fibonacci(n):", max_tokens=80))


if __name__ == "__main__":
    main()
