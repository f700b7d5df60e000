"""Prompt-cache snapshots on disk, so a conversation's next turn prefills only its new tokens also
after a restart (`_snapshots` keeps them in memory and asks this tier).

A snapshot is mlx-lm's `save_prompt_cache` file, written with `moe_core.atomic_write`, in a
directory named by the key (model fingerprint, KV settings, miss mode, layers held, package
versions): a snapshot made under other settings is never looked at. Files over the size limit go
oldest use first (a file's mtime is its last use). A file that does not parse or whose key does
not match is ignored with a `PromptCacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

import moe_core

from ._versions import package_versions

FORMAT = "1"
SUFFIX = ".safetensors"


class PromptCacheWarning(UserWarning):
    """A prompt-cache file was ignored (corrupt, or made for another model or settings)."""


@dataclass(slots=True)
class Entry:
    tokens: tuple[int, ...]
    trimmable: bool
    nbytes: int
    cache: list | None = None  # in memory
    path: Path | None = None  # on disk


def make_key(fingerprint: str, *, kv_bits, kv_group_size: int, miss: str, layers=None) -> dict:
    """What a snapshot's values depend on: another value in any field means another cache."""
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "kv_bits": kv_bits,
        "kv_group_size": kv_group_size,
        "miss": miss,
        "layers": list(layers) if layers is not None else None,
        "versions": package_versions(),
    }


class DiskTier:
    """Snapshot files of one key in `root/<key digest>/`, within `max_bytes` for all of `root`."""

    def __init__(self, root: str | Path, key: dict, *, max_bytes: int, types: list[str]) -> None:
        self.root = Path(root)
        self.key = key
        self.max_bytes = max_bytes
        self.types = types  # the cache classes of this model, layer by layer
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.dir = self.root / digest[:16]
        self.entries: dict[tuple[int, ...], Entry] = {}
        self._scan()

    def _scan(self) -> None:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            try:
                meta = read_metadata(path)
                self._check(meta)
                tokens = tuple(json.loads(meta["tokens"]))
                if not tokens or not all(isinstance(t, int) for t in tokens):
                    raise ValueError("no tokens")
                trimmable = meta["trimmable"] == "1"
            except Exception as e:
                _warn(path, e)
                continue
            self.entries[tokens] = Entry(tokens, trimmable, path.stat().st_size, path=path)

    def _check(self, meta: dict) -> None:
        if meta.get("moe_prompt_cache") != FORMAT:
            raise ValueError(f"not a moe prompt cache of format {FORMAT}")
        saved = json.loads(meta.get("key", "null"))
        if saved != self.key:
            differ = [
                k for k in self.key if not isinstance(saved, dict) or saved.get(k) != self.key[k]
            ]
            raise ValueError(f"made for another model or settings ({', '.join(differ)} differ)")

    def load(self, entry: Entry) -> list | None:
        assert entry.path is not None
        try:
            cache, meta = load_prompt_cache(str(entry.path), return_metadata=True)
            self._check(meta)
            if json.loads(meta["tokens"]) != list(entry.tokens):
                raise ValueError("its tokens changed since it was listed")
            check_cache(cache, self.types, len(entry.tokens))
            mx.eval([c.state for c in cache])
        except Exception as e:
            _warn(entry.path, e)
            self.entries.pop(entry.tokens, None)
            return None
        os.utime(entry.path)  # a use: the last to be evicted
        return cache

    def save(self, tokens: tuple[int, ...], cache: list, *, trimmable: bool) -> bool:
        name = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:32] + SUFFIX
        path = self.dir / name
        if tokens in self.entries and path.exists():
            os.utime(path)
            return False
        meta = {
            "moe_prompt_cache": FORMAT,
            "key": json.dumps(self.key, sort_keys=True),
            "tokens": json.dumps(list(tokens)),
            "trimmable": "1" if trimmable else "0",
        }
        size = state_bytes(cache)
        if size > self.max_bytes:
            return False
        self._make_room(size)
        with moe_core.atomic_write(path) as f:
            save_prompt_cache(f, cache, meta)  # type: ignore[arg-type]  # it takes a file too
        self.entries[tokens] = Entry(tokens, trimmable, path.stat().st_size, path=path)
        if trimmable:  # it serves every prompt its prefixes served
            for old in [t for t in self.entries if len(t) < len(tokens) and tokens[: len(t)] == t]:
                self._remove(self.entries.pop(old).path)
        return True

    def _make_room(self, size: int) -> None:
        """Delete the least recently used files under `root` (of any key) until `size` more
        bytes fit in the limit."""
        files = []
        for path in self.root.glob(f"*/*{SUFFIX}"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(f[1] for f in files)
        for _, nbytes, path in sorted(files):
            if total + size <= self.max_bytes:
                break
            self._remove(path)
            total -= nbytes
            for tokens in [t for t, e in self.entries.items() if e.path == path]:
                del self.entries[tokens]

    @staticmethod
    def _remove(path: Path | None) -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    def stats(self) -> dict:
        return {
            "disk_dir": str(self.dir),
            "disk_entries": len(self.entries),
            "disk_bytes": sum(e.nbytes for e in self.entries.values()),
            "disk_limit": self.max_bytes,
        }


def read_metadata(path: Path) -> dict:
    """The `__metadata__` of a safetensors file, from its header alone; mlx-lm's own metadata
    is the first item of the list it stores (keys "0.NAME")."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(os.fstat(f.fileno()).st_size - 8, 1 << 28):
            raise ValueError("header length past the end of the file")
        header = json.loads(f.read(length))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("no metadata")
    return {k[2:]: v for k, v in meta.items() if k.startswith("0.")}


def check_cache(cache: list, types: list[str], tokens: int) -> None:
    """A loaded cache must have this model's layers and hold as many tokens as it says."""
    got = [type(c).__name__ for c in cache]
    if got != types:
        raise ValueError(f"cache layers {got[:3]}... do not match the model's {types[:3]}...")
    for c in cache:
        offset = getattr(c, "offset", None)
        if offset is not None and offset != tokens:
            raise ValueError(f"a layer holds {offset} tokens, the file says {tokens}")


def state_bytes(cache: list) -> int:
    return sum(a.nbytes for c in cache for a in _arrays(c.state))


def _arrays(value):
    if isinstance(value, mx.array):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)


def _warn(path: Path, error: Exception) -> None:
    warnings.warn(f"ignoring prompt cache file {path}: {error}", PromptCacheWarning, stacklevel=3)
