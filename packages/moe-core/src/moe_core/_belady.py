"""Belady's offline optimum for one layer's steps, the ceiling of every cache policy.

On a miss it evicts the resident expert whose next use is furthest away; no online policy can do
better. A step's experts must be resident together, so they are never the ones evicted; a step
with more experts than slots passes through in waves, after which the `capacity` experts needed
soonest stay. Used by the profile simulator and by the live window (`RecentSteps`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np


def optimal_hits(
    steps: Sequence[np.ndarray], capacity: int, *, count_from: int = 0
) -> tuple[int, int]:
    """Hits and misses of the optimum over `steps` (each the unique expert ids of one step) with
    `capacity` slots, starting empty; steps before `count_from` fill the cache uncounted."""
    ids = [s.tolist() for s in steps]
    never = len(ids)  # the next use of an expert not used again
    next_use: list[list[int]] = [[]] * len(ids)
    seen: dict[int, int] = {}
    for i in range(len(ids) - 1, -1, -1):
        row = ids[i]
        next_use[i] = [seen.get(e, never) for e in row]
        for e in row:
            seen[e] = i
    resident: dict[int, int] = {}  # expert -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, expert); stale entries are skipped
    hits = misses = 0
    for i, (row, uses) in enumerate(zip(ids, next_use, strict=True)):
        missing = sum(1 for e in row if e not in resident)
        if i >= count_from:
            hits += len(row) - missing
            misses += missing
        if len(row) <= capacity:
            evict = missing - (capacity - len(resident))
            now = set(row)
            while evict > 0:
                key, e = heapq.heappop(heap)
                if resident.get(e) == -key and e not in now:
                    del resident[e]
                    evict -= 1
            for e, use in zip(row, uses, strict=True):
                resident[e] = use
                heapq.heappush(heap, (-use, e))
            if len(heap) > 4 * capacity + 64:  # drop stale entries now and then
                heap = [(-use, e) for e, use in resident.items()]
                heapq.heapify(heap)
        else:
            for e, use in zip(row, uses, strict=True):
                resident[e] = use
            keep = heapq.nsmallest(capacity, resident.items(), key=lambda item: item[1])
            resident = dict(keep)
            heap = [(-use, e) for e, use in resident.items()]
            heapq.heapify(heap)
    return hits, misses
