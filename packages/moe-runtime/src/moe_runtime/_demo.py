"""Where the demo model that ships with the package lives."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def demo_model_path() -> Path:
    """The directory of the small demo model shipped as package data."""
    return Path(str(files("moe_runtime") / "demo"))
