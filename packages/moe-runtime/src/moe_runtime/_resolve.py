"""Turn what the user named (a local directory or a Hugging Face Hub repo id) into a directory."""

from __future__ import annotations

import re
from pathlib import Path

from moe_core import MoEError

from ._demo import demo_model_path

# What a checkpoint needs to be loaded by mlx-lm and offloaded; nothing else is fetched.
_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(MoEError, FileNotFoundError):
    """The model is neither a local checkpoint directory nor reachable on the Hub."""


DEMO = "demo"


def resolve_model(model: str | Path | None) -> tuple[str, Path]:
    """`(model_id, directory)` for a local directory, a Hub repo id, or the demo model (None or
    `"demo"`, unless a directory of that name is here)."""
    if model is None or (str(model) == DEMO and not Path(DEMO).is_dir()):
        path = demo_model_path()
        _check_dir(path, "the demo model")
        return "moe-demo", path
    path = Path(model).expanduser()
    if path.is_dir():
        _check_dir(path, str(path))
        return path.name, path.resolve()
    name = str(model)
    if path.is_absolute() or name.startswith(".") or not _REPO_ID.match(name):
        raise ModelNotFoundError(f"model {name!r}: no such directory, and not a Hub repo id")
    return name, _download(name)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, bad revision: all one message
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({type(e).__name__}: {reason})"
        ) from e


def _check_dir(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{what}: no config.json in {path}")
