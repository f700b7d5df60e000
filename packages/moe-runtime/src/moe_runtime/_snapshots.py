"""Prompt-cache snapshots kept past the request that made them, so a conversation's next turn
prefills only its new tokens: in memory within a byte budget the plan counts, and on disk within
a size limit, so this also holds after a restart.

A snapshot is the model's cache (mlx-lm's cache objects) after exactly `tokens`. One that can be
trimmed (attention) serves any prompt sharing a prefix with it; one that cannot (Qwen3-Next's
linear-attention state) only a prompt that extends all of it, which is why such states are taken
at message boundaries.

On disk a snapshot is mlx-lm's `save_prompt_cache` file, written with `moe_core.atomic_write`, in
a directory named by the key (model fingerprint, KV settings, miss mode, layers held, package
versions): a snapshot made under other settings is never looked at. Files over the size limit go
oldest use first (a file's mtime is its last use). A file that does not parse or whose key does
not match is ignored with a `PromptCacheWarning`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import (
    load_prompt_cache,
    make_prompt_cache,
    save_prompt_cache,
    trim_prompt_cache,
)

import moe_core

FORMAT = "1"
SUFFIX = ".safetensors"
# Unless told otherwise, snapshots in memory may take up to this share of the memory budget,
# and no more than this many full contexts (a snapshot is at most one).
MEMORY_SHARE = 1 / 16
MEMORY_CONTEXTS = 4
DISK_DEFAULT = "8GB"
_PACKAGES = ("moe-core", "moe-runtime", "mlx", "mlx-lm")


class PromptCacheWarning(UserWarning):
    """A prompt-cache file was ignored (corrupt, or made for another model or settings)."""


@dataclass(slots=True)
class Entry:
    tokens: tuple[int, ...]
    trimmable: bool
    nbytes: int
    cache: list | None = None  # in memory
    path: Path | None = None  # on disk


@dataclass(slots=True)
class Found:
    """The best snapshot for a prompt: how many of its tokens it gives, and from where."""

    usable: int
    entry: Entry
    tier: str  # "memory" | "disk"


def make_key(fingerprint: str, *, kv_bits, kv_group_size: int, miss: str, layers=None) -> dict:
    """What a snapshot's values depend on: another value in any field means another cache."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unknown"
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "kv_bits": kv_bits,
        "kv_group_size": kv_group_size,
        "miss": miss,
        "layers": list(layers) if layers is not None else None,
        "versions": versions,
    }


def parse_limit(value: int | str, name: str) -> int:
    """Bytes from a size (`8GB`), where 0 (or "0", "off") turns the tier off."""
    if isinstance(value, str) and value.strip().lower() in ("0", "off", "none"):
        return 0
    n = moe_core.parse_size(value)
    if n < 0:
        raise ValueError(f"{name} must be 0 or more bytes, got {value!r}")
    return n


def default_memory(budget: int, context_bytes: int) -> int:
    """Bytes of snapshots kept in memory unless told otherwise."""
    return int(min(budget * MEMORY_SHARE, MEMORY_CONTEXTS * context_bytes))


def open_store(
    model,
    fingerprint: str,
    *,
    memory_bytes: int,
    directory: str | Path | None,
    disk_bytes: int,
    kv,
    miss: str,
) -> SnapshotStore:
    """The store a session keeps its snapshots in; on disk only with a `directory` and a
    `disk_bytes` limit above 0. `kv` is the session's `KVPlan`."""
    disk = None
    if directory is not None and disk_bytes > 0:
        key = make_key(fingerprint, kv_bits=kv.kv_bits, kv_group_size=kv.group_size, miss=miss)
        types = [type(c).__name__ for c in make_prompt_cache(model)]
        disk = DiskTier(directory, key, max_bytes=disk_bytes, types=types)
    return SnapshotStore(memory_bytes=memory_bytes, disk=disk)


class SnapshotStore:
    """Snapshots by their tokens: an LRU in memory up to `memory_bytes` and at most
    `max_entries`, backed by `disk` when given. `memory_bytes` None is no byte limit and none
    planned: a split model's single last snapshot. Only the thread running the model calls it."""

    def __init__(
        self,
        *,
        memory_bytes: int | None,
        disk: DiskTier | None = None,
        max_entries: int | None = None,
    ) -> None:
        self.memory_bytes = memory_bytes
        self.max_entries = max_entries
        self.disk = disk
        self.memory: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.counts = {"memory_hits": 0, "disk_hits": 0, "disk_writes": 0, "evicted": 0}

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.memory.values())

    def best(self, prompt: list[int], limit: int) -> Found | None:
        """The snapshot giving the most tokens of `prompt` (at most `limit`), memory first."""
        found = None
        for tier, entries in (("memory", self.memory.values()), ("disk", self._disk_entries())):
            for entry in entries:
                n = usable(entry, prompt, limit)
                if n > 0 and (found is None or n > found.usable):
                    found = Found(n, entry, tier)
        return found

    def take(self, found: Found) -> list | None:
        """A cache of its own holding `found.usable` tokens (None: its file proved bad)."""
        entry = found.entry
        cache: list | None
        if found.tier == "memory":
            assert entry.cache is not None  # an entry in memory holds its cache
            self.memory.move_to_end(entry.tokens)
            cache = copy_cache(entry.cache)
            self.counts["memory_hits"] += 1
        else:
            assert self.disk is not None
            cache = self.disk.load(entry)
            if cache is None:
                return None
            self.counts["disk_hits"] += 1
        excess = len(entry.tokens) - found.usable
        if excess and trim_prompt_cache(cache, excess) != excess:
            raise RuntimeError(f"could not trim a snapshot of {len(entry.tokens)} tokens")
        return cache

    def put(self, tokens: list[int], cache: list, *, trimmable: bool, owned: bool) -> None:
        """Keep a snapshot in memory: `cache` itself when `owned` (the caller gives it up), else a
        copy. A trimmable one replaces those holding a prefix of its tokens (it serves them too)."""
        key = tuple(tokens)
        if not key:
            return
        nbytes = cache_bytes(cache)
        limit = self.max_entries or 1 << 62
        room = self.memory_bytes if self.memory_bytes is not None else 1 << 62
        if nbytes > room or limit < 1:
            return
        self.memory.pop(key, None)
        if trimmable:
            for old in [k for k in self.memory if len(k) < len(key) and key[: len(k)] == k]:
                del self.memory[old]
        while self.memory and (self.nbytes + nbytes > room or len(self.memory) >= limit):
            self.memory.popitem(last=False)
            self.counts["evicted"] += 1
        self.memory[key] = Entry(key, trimmable, nbytes, cache if owned else copy_cache(cache))

    def persist(self, tokens: Sequence[int], cache: list, *, trimmable: bool) -> None:
        """Write a snapshot to disk (when there is a disk tier) for the next start."""
        if (
            self.disk is not None
            and tokens
            and self.disk.save(tuple(tokens), cache, trimmable=trimmable)
        ):
            self.counts["disk_writes"] += 1

    def stats(self) -> dict:
        out = {
            "memory_entries": len(self.memory),
            "memory_bytes": self.nbytes,
            "memory_limit": self.memory_bytes or 0,  # bytes the plan reserves for them
            **self.counts,
        }
        if self.disk is not None:
            out.update(self.disk.stats())
        return out

    def _disk_entries(self):
        return self.disk.entries.values() if self.disk is not None else ()


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


def usable(entry: Entry, prompt: list[int], limit: int) -> int:
    """Tokens of `prompt` (at most `limit`) the snapshot can hold after trimming, if it may."""
    n = len(entry.tokens)
    common = _common_prefix(entry.tokens, prompt)
    if entry.trimmable:
        return min(common, limit)
    return n if common == n and n <= limit else 0


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


def copy_cache(cache: list) -> list:
    """A copy whose arrays are new: mlx-lm's caches write into their arrays in place."""
    copied = copy.deepcopy(cache)
    mx.eval([c.state for c in copied])
    return copied


def cache_bytes(cache: list) -> int:
    return sum(c.nbytes for c in cache)


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


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
