"""The package versions a saved file's key names (warm-start state, prompt-cache snapshots): a
file written under other versions of these is not read back. Changing this list or the values
changes every key, orphaning users' saved files."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("moe-core", "moe-runtime", "mlx", "mlx-lm")


def package_versions() -> dict[str, str]:
    """Each of `PACKAGES`'s installed version, in that order ("unknown" where not installed)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
