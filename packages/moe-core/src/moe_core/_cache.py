"""The expert cache of one MoE layer: which expert sits in which slot, and which to evict.

It does no I/O. It plans: for the experts one step needs it says which to load into which slot,
and, when they cannot all be resident at once, in which waves to run them. The offloaded layer
does the reads; the profile simulator replays traces through the very same class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ._errors import BudgetError
from ._policy import DEFAULT_POLICY, Policy, make_policy
from ._window import RecentSteps, WindowStats


@dataclass(slots=True)
class Wave:
    """Experts that are resident together for one pass of the layer's kernel."""

    experts: np.ndarray  # expert ids computed in this wave
    loads: list[tuple[int, int]]  # (expert, slot) to read before computing


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    steps: int = 0
    waves: int = 0
    prefetched: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class ExpertCache:
    """Slot table and replacement policy for `capacity` slots over `num_experts` experts."""

    num_experts: int
    capacity: int
    policy: Policy | str = DEFAULT_POLICY
    stats: CacheStats = field(default_factory=CacheStats)
    slot_of: np.ndarray = field(init=False)  # [E] slot of each expert, -1 when absent
    expert_in: np.ndarray = field(init=False)  # [C] expert in each slot, -1 when free
    pinned: np.ndarray = field(init=False)  # [E] bool
    # Told the ids of experts that just left their slots (an offloaded layer's observers).
    on_evict: Callable[[np.ndarray], None] | None = None
    # The last steps and their hits, for the live comparison with Belady's optimum.
    recent: RecentSteps = field(default_factory=RecentSteps)
    _ahead: int = 0  # experts read ahead since the last step

    def __post_init__(self) -> None:
        if not 1 <= self.capacity <= self.num_experts:
            raise BudgetError(
                f"capacity {self.capacity} is outside 1..{self.num_experts} (the layer's experts)"
            )
        if isinstance(self.policy, str):
            self.policy = make_policy(self.policy, self.num_experts, self.capacity)
        self.slot_of = np.full(self.num_experts, -1, dtype=np.int64)
        self.expert_in = np.full(self.capacity, -1, dtype=np.int64)
        self.pinned = np.zeros(self.num_experts, dtype=bool)

    # -- queries -------------------------------------------------------------------------------
    def resident(self) -> np.ndarray:
        return self.expert_in[self.expert_in >= 0]

    def fits(self, needed: np.ndarray) -> bool:
        """Whether `needed` (unique ids) can be resident at once next to the pinned experts."""
        pinned_elsewhere = int(self.pinned.sum()) - int(self.pinned[needed].sum())
        return needed.size + pinned_elsewhere <= self.capacity

    def reset_stats(self) -> None:
        self.stats = CacheStats()
        self.recent.clear()
        self._ahead = 0

    def window(self) -> WindowStats | None:
        """The live hit rate next to Belady's over the recent steps (see `RecentSteps`)."""
        return self.recent.compare(self.capacity)

    # -- one routing step ----------------------------------------------------------------------
    def record_hits(self, choices: int) -> None:
        """A step whose `choices` were all resident, counted on the device (no host sync)."""
        self.stats.hits += choices
        self.stats.steps += 1

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """For a step that computes only the resident experts (lossy `skip`): each choice's
        slot, -1 where absent, counting hits and misses per choice; nothing is admitted."""
        slot = self.slot_of[ids]
        resident = slot >= 0
        hits = int(resident.sum())
        self.stats.hits += hits
        self.stats.misses += int(resident.size) - hits
        assert isinstance(self.policy, Policy)
        self.policy.on_access(np.unique(ids[resident]))
        return slot

    def step(self, needed: np.ndarray, *, count: bool = True) -> Iterator[Wave]:
        """Plan one step over the unique expert ids `needed`.

        Yields one wave when they all fit, else several; the caller must finish computing a wave
        before asking for the next, whose loads reuse its slots. No expert of the current wave is
        ever evicted, nor a pinned one.
        """
        policy = self.policy
        assert isinstance(policy, Policy)
        policy.tick()
        self.stats.steps += 1
        is_hit = self.slot_of[needed] >= 0
        hits, misses = needed[is_hit], needed[~is_hit]
        if count:
            self.stats.hits += int(hits.size)
            self.stats.misses += int(misses.size)
            self.recent.add(needed, int(hits.size), int(misses.size) + self._ahead)
            self._ahead = 0
        # The whole step is one use of each of its experts, told before anything is loaded.
        policy.on_access(needed)

        protected = self.pinned.copy()
        protected[needed] = True
        room = self._free_slots().size + self._evictable(protected).size
        if misses.size <= room:
            self.stats.waves += 1
            yield Wave(needed, self._admit(misses, protected, used=False))
            return

        # More experts than slots: run hits plus what fits, then the rest in later waves, each
        # evicting the finished wave's experts (never a pinned one).
        chunk = self.capacity - int(self.pinned[self.resident()].sum())
        first, rest = misses[:room], misses[room:]
        self.stats.waves += 1
        yield Wave(np.concatenate([hits, first]), self._admit(first, protected, used=False))
        for start in range(0, rest.size, chunk):
            wave = rest[start : start + chunk]
            protected = self.pinned.copy()
            protected[wave] = True
            self.stats.waves += 1
            yield Wave(wave, self._admit(wave, protected, used=False))

    def _free_slots(self) -> np.ndarray:
        return np.flatnonzero(self.expert_in < 0)

    def _evictable(self, protected: np.ndarray) -> np.ndarray:
        resident = self.resident()
        return resident[~protected[resident]]

    def _admit(
        self, experts: np.ndarray, protected: np.ndarray, *, used: bool = True
    ) -> list[tuple[int, int]]:
        """Give each of `experts` a slot, evicting by policy; returns the (expert, slot) loads.
        `used`: count the load as a use (a warm start); a step has told its uses already."""
        if experts.size == 0:
            return []
        policy = self.policy
        assert isinstance(policy, Policy)
        free = self._free_slots()
        shortfall = experts.size - free.size
        if shortfall > 0:
            victims = policy.victims(shortfall, self._evictable(protected))
            if victims.size < shortfall:
                raise BudgetError(
                    f"{experts.size} experts must be resident together but only "
                    f"{free.size + victims.size} of {self.capacity} slots can be freed "
                    f"({int(self.pinned.sum())} pinned)"
                )
            self._evict(victims)
            free = self._free_slots()
        slots = free[: experts.size]
        self.slot_of[experts] = slots
        self.expert_in[slots] = experts
        # The use first, then the insertion: a policy that counts uses of resident experts only
        # (S3-FIFO) sees a fresh load as not yet resident, as with a step's misses.
        if used:
            policy.on_access(experts)
        policy.on_insert(experts)
        return list(zip(experts.tolist(), slots.tolist(), strict=True))

    def _evict(self, experts: np.ndarray) -> None:
        assert isinstance(self.policy, Policy)
        self.policy.on_evict(experts)
        self.expert_in[self.slot_of[experts]] = -1
        self.slot_of[experts] = -1
        self.stats.evictions += int(experts.size)
        if self.on_evict is not None:
            self.on_evict(experts)

    def forget(self, experts: np.ndarray) -> None:
        """Free the slots of `experts` whose reads failed: nothing stays marked resident that
        does not hold its bytes. Not counted as evictions."""
        experts = np.asarray(experts, dtype=np.int64)
        experts = experts[self.slot_of[experts] >= 0]
        assert isinstance(self.policy, Policy)
        self.policy.on_evict(experts)
        self.expert_in[self.slot_of[experts]] = -1
        self.slot_of[experts] = -1

    # -- outside the forward pass --------------------------------------------------------------
    def prefetch(
        self, experts: np.ndarray, *, keep: np.ndarray | None = None, used: bool = True
    ) -> list[tuple[int, int]]:
        """Make `experts` resident ahead of need (warm start, profiles, lookahead, skip's fill),
        evicting only unpinned experts not in `keep`: it fills free slots first, then evicts by
        policy. Loads are not counted as misses; with `used`, they count as uses."""
        experts = np.unique(np.asarray(experts, dtype=np.int64))
        experts = experts[self.slot_of[experts] < 0]
        held = self.pinned.copy()
        if keep is not None:
            held[keep] = True
        room = self._free_slots().size + self._evictable(held).size
        experts = experts[:room]
        loads = self._admit(experts, held | _mask(self.num_experts, experts), used=used)
        self.stats.prefetched += len(loads)
        self._ahead += len(loads)
        return loads

    def predict(self, experts: np.ndarray) -> list[tuple[int, int]]:
        """The lookahead expects `experts` at this layer's next step: tell the policy, and load
        the absent ones as `prefetch` does, without counting the guess as a use."""
        experts = np.unique(np.asarray(experts, dtype=np.int64))
        assert isinstance(self.policy, Policy)
        self.policy.on_predict(experts)
        return self.prefetch(experts, used=False)

    def pin(self, experts: np.ndarray) -> list[tuple[int, int]]:
        """Pin `experts` (loading any that are absent); they are never evicted afterwards."""
        experts = np.unique(np.asarray(experts, dtype=np.int64))
        if experts.size and (experts.min() < 0 or experts.max() >= self.num_experts):
            raise ValueError(f"expert ids must be in 0..{self.num_experts - 1}")
        total = int((self.pinned | _mask(self.num_experts, experts)).sum())
        if total >= self.capacity:
            raise BudgetError(
                f"cannot pin {total} experts in {self.capacity} slots: at least one slot must stay "
                "free for the experts a token needs"
            )
        missing = experts[self.slot_of[experts] < 0]
        loads = self._admit(missing, self.pinned | _mask(self.num_experts, experts))
        self.pinned[experts] = True
        return loads

    def unpin(self, experts: np.ndarray | None = None) -> None:
        if experts is None:
            self.pinned[:] = False
        else:
            self.pinned[np.asarray(experts, dtype=np.int64)] = False


def _mask(size: int, ids: np.ndarray) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[ids] = True
    return mask
