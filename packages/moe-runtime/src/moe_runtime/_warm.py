"""Warm start: the resident expert set, saved when a session closes and loaded back the next time
the same model starts with the same capacity, profile and package versions.

The file is written atomically (a temporary file in the same directory, then `os.replace`). A
file that does not parse, or whose key does not match, means a cold start and one warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

FORMAT = 1
_PACKAGES = ("moe-core", "moe-runtime", "mlx", "mlx-lm")


class WarmStartWarning(UserWarning):
    """A warm-start file was ignored; the session started cold."""


@dataclass(frozen=True, slots=True)
class WarmKey:
    fingerprint: str
    capacity: tuple[int, ...]
    profile: str | None  # digest of the profile file, if one was given
    versions: tuple[tuple[str, str], ...]

    def as_json(self) -> dict:
        return {**asdict(self), "capacity": list(self.capacity), "versions": dict(self.versions)}


def make_key(fingerprint: str, capacity: list[int], profile: str | None) -> WarmKey:
    return WarmKey(fingerprint, tuple(capacity), profile, tuple(_versions().items()))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe"


def state_path(cache_dir: Path, key: WarmKey) -> Path:
    return cache_dir / "warm" / f"{key.fingerprint}.json"


def load_state(path: Path, key: WarmKey, num_experts: list[int]) -> list[list[int]] | None:
    """The saved resident sets per MoE layer, or None (no file: silently; a bad one: one warning)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"unknown format {data.get('format') if isinstance(data, dict) else data!r}"
            )
        if data.get("key") != key.as_json():
            raise ValueError(f"saved for another setup ({_difference(data.get('key'), key)})")
        resident = data["resident"]
        _check_resident(resident, key.capacity, num_experts)
        return resident
    except Exception as e:  # corrupt in any way: start cold, say so once
        warnings.warn(
            f"ignoring warm-start state {path}: {e}; starting cold", WarmStartWarning, stacklevel=3
        )
        return None


def save_state(path: Path, key: WarmKey, resident: list[set[int]], stats: dict) -> None:
    data = {
        "format": FORMAT,
        "key": key.as_json(),
        "resident": [sorted(ids) for ids in resident],
        "stats": stats,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_resident(resident, capacity: tuple[int, ...], num_experts: list[int]) -> None:
    if not isinstance(resident, list) or len(resident) != len(num_experts):
        raise ValueError(
            f"resident sets for {_len(resident)} layers, the model has {len(num_experts)}"
        )
    for layer, (ids, cap, experts) in enumerate(zip(resident, capacity, num_experts, strict=True)):
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise ValueError(f"layer {layer}: resident set is not a list of expert ids")
        if len(ids) > cap or len(set(ids)) != len(ids):
            raise ValueError(f"layer {layer}: {len(ids)} resident experts for {cap} slots")
        if any(i < 0 or i >= experts for i in ids):
            raise ValueError(f"layer {layer}: expert id out of range 0..{experts - 1}")


def _difference(saved, key: WarmKey) -> str:
    if not isinstance(saved, dict):
        return "no key"
    now = key.as_json()
    fields = [name for name in now if saved.get(name) != now[name]]
    return ", ".join(fields) + " differ" if fields else "key differs"


def _len(value) -> int | str:
    return len(value) if isinstance(value, list) else "no"


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
