"""The contenders and their one-time setup, done before anything is timed: moe's packed layout
(when moe-core has it), BigRig's separate venv and its packed blob."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BIGRIG = "bigrig==0.9.1"
BIGRIG_DEPS = ("mlx[cpu]==0.32.4", "mlx-lm==0.32.2")
CHILD = Path(__file__).with_name("_child.py")


@dataclass(frozen=True, slots=True)
class Contender:
    name: str  # as it appears in the JSON
    kind: str  # "mlx" | "moe" | "bigrig"
    options: tuple = ()  # extra (key, value) pairs for the child's spec

    def __post_init__(self) -> None:
        if self.kind not in ("mlx", "moe", "bigrig"):
            raise ValueError(f"unknown contender kind {self.kind!r}")


CONTENDERS = {
    "mlx": Contender("mlx-lm (resident)", "mlx"),
    "moe": Contender("moe (checkpoint)", "moe", (("packed", None), ("lookahead", False))),
    "moe-packed": Contender("moe (packed)", "moe", (("packed", "auto"), ("lookahead", False))),
    "moe-lookahead": Contender(
        "moe (packed + lookahead)", "moe", (("packed", "auto"), ("lookahead", True))
    ),
    "bigrig": Contender("bigrig 0.9.1", "bigrig"),
}


def moe_features() -> set[str]:
    """Which of packed / lookahead this moe-core offers (they are landing separately)."""
    import inspect

    import moe_core

    params = inspect.signature(moe_core.offload).parameters
    return {name for name in ("packed", "lookahead") if name in params} | (
        {"pack"} if hasattr(moe_core, "pack") else set()
    )


def child_options(contender: Contender, features: set[str]) -> dict:
    """The contender's options this moe-core understands; raises when it lacks a needed one."""
    options = dict(contender.options)
    if contender.kind != "moe":
        return options
    for key in ("packed", "lookahead"):
        if not options.get(key) and key not in features:
            options.pop(key)  # an older moe-core always reads the checkpoint, without lookahead
    missing = [k for k, v in options.items() if v and k not in features]
    if missing:
        raise RuntimeError(f"this moe-core has no {', '.join(missing)} yet")
    return options


def ensure_packed_moe(path: Path) -> None:
    from mlx_lm.utils import load_model

    import moe_core

    if (path / "experts.moepack").exists():
        return
    model, _ = load_model(path, lazy=True)
    moe_core.pack(model, path)


def bigrig_python(cache_dir: Path, log=print) -> Path:
    """BigRig's own venv (it is declared macOS-only, so it is installed without its deps)."""
    venv = cache_dir / "bigrig-venv"
    python = venv / "bin" / "python"
    if python.exists() and _imports(python):
        return python
    log("installing BigRig into its own venv ...")
    uv = ["uv"]
    steps = [
        [*uv, "venv", "-q", str(venv), "--python", sys.executable],
        [*uv, "pip", "install", "-q", "--python", str(python), *BIGRIG_DEPS],
        [*uv, "pip", "install", "-q", "--python", str(python), "--no-deps", BIGRIG],
    ]
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{' '.join(step[:3])} failed: {out.stderr.strip()[-300:]}")
    if not _imports(python):
        raise RuntimeError("bigrig installed but bigrig_engine.stream does not import")
    return python


def _imports(python: Path) -> bool:
    code = "import bigrig_engine.stream"
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def bigrig_env(cache_dir: Path) -> dict:
    return {**os.environ, "BIGRIG_HOME": str(cache_dir / "bigrig-home")}


def bigrig_blob(python: Path, model: Path, cache_dir: Path) -> Path:
    """BigRig reads the whole model once to write its expert blob; done here, never timed."""
    blob = cache_dir / "bigrig-blobs" / (model.name + ".experts")
    code = (
        "import sys; from bigrig_engine.stream import ensure_packed; "
        "ensure_packed(sys.argv[1], sys.argv[2], verbose=False)"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(model), str(blob)],
        capture_output=True, text=True, env=bigrig_env(cache_dir),
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"BigRig could not pack {model}: {out.stderr.strip()[-300:]}")
    return blob
