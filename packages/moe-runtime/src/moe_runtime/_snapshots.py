"""Prompt-cache snapshots kept past the request that made them, so a conversation's next turn
prefills only its new tokens: in memory within a byte budget the plan counts, and on disk within
a size limit, so this also holds after a restart.

A snapshot is the model's cache (mlx-lm's cache objects) after exactly `tokens`. One that can be
trimmed (attention) serves any prompt sharing a prefix with it; one that cannot (Qwen3-Next's
linear-attention state) only a prompt that extends all of it, which is why such states are taken
at message boundaries.

On disk a snapshot is mlx-lm's prompt-cache file, one directory per key (`_snapshot_files`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

import moe_core

from ._snapshot_files import DiskTier, Entry, make_key

# Unless told otherwise, snapshots in memory may take up to this share of the memory budget,
# and no more than this many full contexts (a snapshot is at most one).
MEMORY_SHARE = 1 / 16
MEMORY_CONTEXTS = 4
DISK_DEFAULT = "8GB"


@dataclass(slots=True)
class Found:
    """The best snapshot for a prompt: how many of its tokens it gives, and from where."""

    usable: int
    entry: Entry
    tier: str  # "memory" | "disk"


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


def usable(entry: Entry, prompt: list[int], limit: int) -> int:
    """Tokens of `prompt` (at most `limit`) the snapshot can hold after trimming, if it may."""
    n = len(entry.tokens)
    common = _common_prefix(entry.tokens, prompt)
    if entry.trimmable:
        return min(common, limit)
    return n if common == n and n <= limit else 0


def copy_cache(cache: list) -> list:
    """A copy whose arrays are new: mlx-lm's caches write into their arrays in place."""
    copied = copy.deepcopy(cache)
    mx.eval([c.state for c in copied])
    return copied


def cache_bytes(cache: list) -> int:
    return sum(c.nbytes for c in cache)


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
