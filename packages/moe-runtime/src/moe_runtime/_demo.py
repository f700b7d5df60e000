"""Where the demo model that moe-runtime ships lies."""

from importlib import resources
from pathlib import Path


def demo_model_path() -> Path:
    """The folder of the shipped demo model, ready for `mlx_lm.load`.

    A small qwen3_moe trained on Python source and tool-call conversations, with Qwen's tool-call
    and thinking chat template (see training/README.md in the repository).
    """
    folder = resources.files("moe_runtime") / "demo"
    path = Path(str(folder))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is missing from {path}: reinstall moe-runtime")
    return path
