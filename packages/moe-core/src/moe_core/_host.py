"""Host memory between a layer's GPU slots and storage (CUDA, where the GPU has memory of its own).

`HostRows` holds expert records in host memory (pinned on CUDA), allocated in blocks as they
fill, each parameter in a 4 KiB-aligned region so storage can be read with O_DIRECT straight
into it (the bytes then start `shift` into the region, where the file offset was unaligned).

Two ways to use those rows, one per layer:
- `Staging` (no host tier): one row per GPU slot, where the slot's next expert is read before
  its upload. It caches nothing: what a row holds is also in its slot.
- `HostTier`: a second cache level with its own policy and statistics. A GPU miss whose expert
  the tier holds is uploaded from its row at bus speed; any other is read from storage into a
  row first, so an expert is read from storage at most once while the tier holds it. An expert
  the GPU evicts and the tier does not hold is copied down into the tier (the tier prefers to
  give up rows of experts the GPU holds), so the two tiers together hold as many experts as
  their sizes allow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from ._cache import ExpertCache
from ._checkpoint import BankMap
from ._policy import Policy

ALIGN = 4096
_BLOCK_BYTES = 64 << 20  # rows are allocated about this much at a time


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def aligned_empty(nbytes: int) -> np.ndarray:
    """Plain host memory whose start is 4 KiB-aligned (pinned memory is page-aligned already)."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


def row_bytes(bank_map: BankMap) -> int:
    """Host bytes one expert of `bank_map` takes in `HostRows` (its record, aligned)."""
    if bank_map.contiguous:
        return _round_up(bank_map.expert_bytes) + ALIGN
    return sum(_round_up(p.nbytes) + ALIGN for p in bank_map.params)


class HostRows:
    """`count` expert records of one bank in host memory, allocated in blocks on first use."""

    __slots__ = (
        "_allocate",
        "_blocks",
        "_lock",
        "map",
        "per_block",
        "region",
        "row_bytes",
        "shift",
    )

    def __init__(
        self,
        bank_map: BankMap,
        count: int,
        allocate: Callable[[int], np.ndarray] = aligned_empty,
    ) -> None:
        self.map = bank_map
        self._allocate = allocate
        self._lock = threading.Lock()  # reader threads may touch a block first
        # Packed records are read whole: one region; otherwise one region per param. Each has
        # room for the bytes starting anywhere in its first 4 KiB.
        if bank_map.contiguous:
            self.region = [(0, _round_up(bank_map.expert_bytes) + ALIGN)]
        else:
            self.region, offset = [], 0
            for param in bank_map.params:
                size = _round_up(param.nbytes) + ALIGN
                self.region.append((offset, size))
                offset += size
        self.row_bytes = sum(size for _, size in self.region)
        self.per_block = max(1, min(count, _BLOCK_BYTES // self.row_bytes))
        self._blocks: list[np.ndarray | None] = [None] * -(-count // self.per_block)
        # [rows, regions] where the bytes start in each region
        self.shift = np.zeros((count, len(self.region)), dtype=np.int64)

    @property
    def allocated(self) -> int:
        """Bytes of host memory held."""
        return sum(b.nbytes for b in self._blocks if b is not None)

    def _row(self, row: int) -> np.ndarray:
        index, within = divmod(row, self.per_block)
        block = self._blocks[index]
        if block is None:
            with self._lock:
                block = self._blocks[index]
                if block is None:
                    rows = min(self.per_block, len(self.shift) - index * self.per_block)
                    block = self._allocate(rows * self.row_bytes).reshape(rows, self.row_bytes)
                    self._blocks[index] = block
        return block[within]

    def regions(self, row: int) -> list[np.ndarray]:
        """The aligned regions of `row` an O_DIRECT read fills (one per param, or one record)."""
        whole = self._row(row)
        return [whole[start : start + size] for start, size in self.region]

    def views(self, row: int) -> list[np.ndarray]:
        """Each param's bytes in `row`, where its expert's record lies."""
        whole, shifts = self._row(row), self.shift[row].tolist()
        if self.map.contiguous:
            out, offset = [], shifts[0]
            for param in self.map.params:
                out.append(whole[offset : offset + param.nbytes])
                offset += param.nbytes
            return out
        return [
            whole[start + shift : start + shift + param.nbytes]
            for (start, _), shift, param in zip(self.region, shifts, self.map.params, strict=True)
        ]


@dataclass(slots=True)
class TierStats:
    hits: int = 0  # GPU misses served from the tier
    misses: int = 0  # GPU misses read from storage into the tier
    evictions: int = 0
    demoted: int = 0  # experts the GPU evicted, copied down into the tier

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


# A plan for one batch of GPU loads: reads from storage into rows, copies from rows to GPU
# slots, and copies from GPU slots down to rows (done first).
Batch = tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]


class Staging:
    """No host tier: slot `s`'s next expert is read into row `s`, then uploaded."""

    __slots__ = ("rows",)
    direct_io = False

    def __init__(self, rows: HostRows) -> None:
        self.rows = rows

    def plan(self, loads: list[tuple[int, int]], held: np.ndarray) -> Batch:
        return list(loads), [(slot, slot) for _, slot in loads], []

    def uploaded(self) -> None:
        pass

    def forget(self, experts: np.ndarray) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}

    def reset_stats(self) -> None:
        pass


class HostTier:
    """One layer's experts in host memory: its own cache (policy, statistics) over `rows`."""

    __slots__ = ("busy", "cache", "gpu", "rows", "tier")
    direct_io = True  # the page cache must not keep a second copy of what the tier holds

    def __init__(self, rows: HostRows, capacity: int, policy: str, gpu: ExpertCache) -> None:
        self.rows = rows
        self.cache = ExpertCache(gpu.num_experts, capacity, policy)
        self.gpu = gpu  # the GPU slots' cache: experts it holds are the cheapest rows to drop
        self.busy = np.zeros(gpu.num_experts, dtype=bool)  # rows with copies not yet done
        self.tier = TierStats()

    def plan(self, loads: list[tuple[int, int]], held: np.ndarray) -> Batch:
        """Rows for the experts of `loads` (`(expert, slot)`), reading the ones the tier lacks;
        `held[slot]` is the expert whose bytes the slot holds now (-1: none)."""
        cache, tier = self.cache, self.tier
        experts = np.array([e for e, _ in loads], dtype=np.int64)
        policy = cast(Policy, cache.policy)  # made from its name
        policy.tick()
        hit = cache.slot_of[experts] >= 0
        tier.hits += int(hit.sum())
        tier.misses += int((~hit).sum())
        policy.on_access(experts[hit])
        protect = self.busy.copy()
        protect[experts] = True
        reads = self._admit(experts[~hit], protect)
        if len(reads) != int((~hit).sum()):
            raise RuntimeError(
                f"host tier of {cache.capacity} rows cannot take {len(loads)} experts at once"
            )
        self.busy[experts] = True
        row_of = cache.slot_of
        uploads = [(slot, int(row_of[e])) for e, slot in loads]
        # Evicted from the GPU by this batch and not in the tier: copy it down before its slot
        # is overwritten, when a row can be freed without losing another expert.
        victims = np.array([held[slot] for _, slot in loads], dtype=np.int64)
        slots = np.array([slot for _, slot in loads], dtype=np.int64)
        lost = (victims >= 0) & (row_of[np.maximum(victims, 0)] < 0)
        lost &= self.gpu.slot_of[np.maximum(victims, 0)] < 0  # not reloaded elsewhere
        demote = []
        if lost.any():
            for expert, row in self._admit(victims[lost], protect, spare_only=True):
                demote.append((int(slots[lost][victims[lost] == expert][0]), row))
                self.busy[expert] = True
            tier.demoted += len(demote)
        return reads, uploads, demote

    def _admit(
        self, experts: np.ndarray, protect: np.ndarray, *, spare_only: bool = False
    ) -> list[tuple[int, int]]:
        """Rows for `experts`: free rows first, then rows of experts the GPU holds, then (unless
        `spare_only`) any by policy; never a protected one."""
        if experts.size == 0:
            return []
        cache = self.cache
        before = cache.stats.evictions
        # First pass: only rows whose experts are also on the GPU may be given up.
        keep = protect | (self.gpu.slot_of < 0)
        loads = cache.prefetch(experts, keep=keep, used=True)
        if not spare_only and len(loads) < experts.size:
            taken = np.array([e for e, _ in loads], dtype=np.int64)
            rest = np.setdiff1d(experts, taken)
            loads += cache.prefetch(rest, keep=protect, used=True)
        self.tier.evictions += cache.stats.evictions - before
        return loads

    def uploaded(self) -> None:
        """The batch's copies are done: its rows may be given up again."""
        self.busy[:] = False

    def forget(self, experts: np.ndarray) -> None:
        """Reads of `experts` into the tier failed: their rows hold nothing."""
        self.cache.forget(experts)

    def stats(self) -> dict[str, int]:
        return {
            "host_capacity": self.cache.capacity,
            "host_resident": int((self.cache.expert_in >= 0).sum()),
            **{f"host_{k}": v for k, v in self.tier.as_dict().items()},
        }

    def reset_stats(self) -> None:
        self.tier = TierStats()
