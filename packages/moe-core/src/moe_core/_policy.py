"""Cache replacement policies for the experts of one MoE layer.

A policy keeps one priority per expert; the resident expert with the lowest priority is evicted
first. Priorities live in a numpy array so choosing victims among up to hundreds of experts is one
vectorised call, not a Python loop per token and layer. Policies whose victim choice is a
procedure rather than an order (S3-FIFO) override `victims`.

What a policy is told, per step of its layer: `tick` (a step begins), `on_access` (experts used
this step: hits first, then each freshly loaded one), `on_insert` (loaded into a slot, after its
access), `on_evict` (left its slot) and `on_predict` (the lookahead expects these at the next
step; they are being loaded ahead of need).
"""

from __future__ import annotations

from collections import deque

import numpy as np

POLICIES = ("lru", "lfu", "lfuda", "fifo", "s3fifo", "stale", "ahead", "markov")
# Chosen on traces no evaluation uses; measured against Belady on held-out ones in
# benchmarks/policies_heldout.py.
DEFAULT_POLICY = "markov"


class Policy:
    """Least-recently-used. The base class; subclasses change how priorities move."""

    name = "lru"

    def __init__(self, num_experts: int, capacity: int | None = None) -> None:
        self.num_experts = num_experts
        self.capacity = num_experts if capacity is None else capacity
        self.priority = np.zeros(num_experts, dtype=np.float64)
        self.clock = 0.0

    def tick(self) -> None:
        """One routing step has passed (a token batch through this layer)."""
        self.clock += 1.0

    def on_access(self, ids: np.ndarray) -> None:
        """`ids` were used this step (hits and freshly loaded misses alike)."""
        self.priority[ids] = self.clock

    def on_insert(self, ids: np.ndarray) -> None:
        """`ids` were just loaded into slots."""

    def on_evict(self, ids: np.ndarray) -> None:
        """`ids` just left their slots."""

    def on_predict(self, ids: np.ndarray) -> None:
        """The lookahead expects `ids` at this layer's next step (they are loaded ahead)."""

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        """The `count` lowest-priority experts among `candidates` (expert ids)."""
        if count <= 0:
            return candidates[:0]
        if count >= candidates.size:
            return candidates
        order = np.argpartition(self.priority[candidates], count - 1)[:count]
        return candidates[order]


class LFU(Policy):
    """Least-frequently-used, counting every use since the start (ties go to the older)."""

    name = "lfu"

    def __init__(self, num_experts: int, capacity: int | None = None) -> None:
        super().__init__(num_experts, capacity)
        self.count = np.zeros(num_experts, dtype=np.float64)
        self.last = np.zeros(num_experts, dtype=np.float64)

    def on_access(self, ids: np.ndarray) -> None:
        self.count[ids] += 1.0
        self.last[ids] = self.clock
        # Recency only breaks ties between equal counts.
        self.priority[ids] = self.count[ids] + self.last[ids] / (self.clock + 1.0) * 0.5


class LFUDA(Policy):
    """LFU with dynamic aging: a loaded expert starts at the priority of the last one evicted, so
    experts that were hot long ago cannot squat on slots forever."""

    name = "lfuda"

    def __init__(self, num_experts: int, capacity: int | None = None) -> None:
        super().__init__(num_experts, capacity)
        self.count = np.zeros(num_experts, dtype=np.float64)
        self.age = 0.0

    def on_access(self, ids: np.ndarray) -> None:
        self.count[ids] += 1.0
        self.priority[ids] = self.count[ids] + self.age

    def on_insert(self, ids: np.ndarray) -> None:
        # A load starts from the age its own evictions just set.
        self.priority[ids] = self.count[ids] + self.age

    def on_evict(self, ids: np.ndarray) -> None:
        if ids.size:
            self.age = max(self.age, float(self.priority[ids].max()))
        self.count[ids] = 0.0


class FIFO(Policy):
    """First in, first out: the expert loaded longest ago leaves first."""

    name = "fifo"

    def on_access(self, ids: np.ndarray) -> None:
        pass

    def on_insert(self, ids: np.ndarray) -> None:
        self.priority[ids] = self.clock


_SMALL, _MAIN = 1, 2


class S3FIFO(Policy):
    """S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023).

    Three FIFO queues: a small one (10% of the slots) that every new expert enters, a main one
    for the rest, and a ghost queue of ids only (as long as main). Each resident keeps a use
    count capped at 3. Evicting from small (while it holds at least its share): the oldest
    expert moves to main if it was used since it came in, else it leaves and its id enters the
    ghost queue. Evicting from main: the oldest expert used since it was last examined goes back
    to the head with its count lowered by one, else it leaves. An expert found in the ghost queue
    when it is loaded goes straight to main. This follows the paper's algorithm with the "used at
    least once" promotion of its write-up (s3fifo.com) and of CacheLib's implementation; a
    step's experts and pinned ones are never examined (they cannot be evicted).
    """

    name = "s3fifo"

    def __init__(self, num_experts: int, capacity: int | None = None, small: float = 0.1) -> None:
        super().__init__(num_experts, capacity)
        self.small_share = max(1, round(small * self.capacity))
        self.queue = np.zeros(num_experts, dtype=np.int8)  # 0 absent, _SMALL or _MAIN
        self.freq = np.zeros(num_experts, dtype=np.int8)
        self.order = np.zeros(num_experts, dtype=np.float64)  # lower = nearer its queue's tail
        self.ghost: deque[int] = deque()
        self.in_ghost = np.zeros(num_experts, dtype=np.int32)  # times the id is in `ghost`
        self.seq = 0.0

    def on_access(self, ids: np.ndarray) -> None:
        # A freshly loaded expert is not resident yet here (on_insert follows): only uses of
        # experts already in a slot count, as in the paper where a miss inserts with count 0.
        resident = ids[self.queue[ids] != 0]
        self.freq[resident] = np.minimum(self.freq[resident] + 1, 3)

    def on_insert(self, ids: np.ndarray) -> None:
        ghosted = self.in_ghost[ids] > 0
        self.queue[ids] = np.where(ghosted, _MAIN, _SMALL)
        self.freq[ids] = 0
        self.order[ids] = self.seq + np.arange(ids.size)
        self.seq += ids.size

    def on_evict(self, ids: np.ndarray) -> None:
        for e in ids[(self.queue[ids] == _SMALL) & (self.freq[ids] == 0)].tolist():
            self.ghost.append(e)
            self.in_ghost[e] += 1
        limit = max(1, self.capacity - self.small_share)
        while len(self.ghost) > limit:
            self.in_ghost[self.ghost.popleft()] -= 1
        self.queue[ids] = 0

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        if count <= 0:
            return candidates[:0]
        if count >= candidates.size:
            return candidates
        chosen: list[int] = []
        left = candidates.copy()
        small_size = int((self.queue == _SMALL).sum())
        while len(chosen) < count:
            in_small = left[self.queue[left] == _SMALL]
            in_main = left[self.queue[left] == _MAIN]
            if in_small.size and (small_size >= self.small_share or not in_main.size):
                tail = int(in_small[np.argmin(self.order[in_small])])
                if self.freq[tail] >= 1:  # used while in small: promote
                    self.queue[tail], self.freq[tail] = _MAIN, 0
                    small_size -= 1
                    self._to_head(tail)
                    continue
                small_size -= 1
            else:
                tail = int(in_main[np.argmin(self.order[in_main])])
                if self.freq[tail] > 0:  # reinsert, one use spent
                    self.freq[tail] -= 1
                    self._to_head(tail)
                    continue
            chosen.append(tail)
            left = left[left != tail]
        return np.asarray(chosen, dtype=candidates.dtype)

    def _to_head(self, expert: int) -> None:
        self.order[expert] = self.seq
        self.seq += 1


class LeastStale(Policy):
    """Least-Stale, after SpecMD (Hoang et al., "SpecMD: A Comprehensive Study On Speculative
    Expert Prefetching", arXiv 2602.03921).

    SpecMD observes that expert use does not follow temporal locality and evicts the *stale*
    experts first: those whose forward pass is over, before the fresh ones loaded for a pass
    still to come; among stale ones, the one that went stale first. Here each layer has its own
    cache, so a step of the layer is a pass: experts used in a finished step are stale (oldest
    use first, as LRU orders them), experts loaded ahead by the lookahead or a warm start and not
    used since are fresh and leave only when no stale expert is left. Without anything loaded
    ahead it is LRU.
    """

    name = "stale"

    def __init__(self, num_experts: int, capacity: int | None = None) -> None:
        super().__init__(num_experts, capacity)
        self.fresh = np.zeros(num_experts, dtype=bool)

    def on_access(self, ids: np.ndarray) -> None:
        self.fresh[ids] = False
        self.priority[ids] = self.clock

    def on_predict(self, ids: np.ndarray) -> None:
        self.fresh[ids] = True

    def on_evict(self, ids: np.ndarray) -> None:
        self.fresh[ids] = False

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        if count <= 0:
            return candidates[:0]
        stale = candidates[~self.fresh[candidates]]
        if count >= stale.size:
            return np.concatenate(
                [stale, super().victims(count - stale.size, candidates[self.fresh[candidates]])]
            )
        return super().victims(count, stale)


class Ahead(LFUDA):
    """LFUDA that uses the lookahead's prediction (the next layer's router applied to this
    layer's input names most of the experts a token will pick there).

    Experts the lookahead predicted for the coming step are not evicted before that step has
    run (only when nothing else is left), and a prediction is not counted as a use: an expert
    loaded ahead and then not picked keeps its old count, so a wrong guess does not pass for a
    hot expert.
    """

    name = "ahead"

    def __init__(self, num_experts: int, capacity: int | None = None) -> None:
        super().__init__(num_experts, capacity)
        self.expected = np.full(num_experts, -1.0)  # the step each expert is predicted for

    def on_predict(self, ids: np.ndarray) -> None:
        self.expected[ids] = self.clock + 1.0

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        if count <= 0:
            return candidates[:0]
        waiting = self.expected[candidates] >= self.clock
        rest = candidates[~waiting]
        if count >= rest.size:
            return np.concatenate([rest, super().victims(count - rest.size, candidates[waiting])])
        return super().victims(count, rest)


class Markov(Policy):
    """Learns from the steps it serves which experts follow which, and keeps the ones likely next.

    It counts, for every pair of experts (a, e), how often e was used at the step after a step
    that used a: a first-order Markov chain over the layer's routing, which captures what
    recency and frequency miss (a token's experts say much about the next token's). Counts fade
    with a half-life of `half_life` steps, so a change of topic is followed. The victim is the
    expert least likely at the next step given this step's experts, plus `recency` / experts
    times 2^-(steps since its last use / 8), so `recency` is in units of one expert's chance
    under uniform routing. The defaults were chosen on traces that no evaluation uses
    (benchmarks/policies_heldout.py).

    Memory: one float32 matrix of experts x experts per layer (1 MiB for 512 experts).
    """

    name = "markov"

    def __init__(
        self,
        num_experts: int,
        capacity: int | None = None,
        *,
        half_life: float = 1024.0,
        recency: float = 1.0,
    ) -> None:
        super().__init__(num_experts, capacity)
        self.follows = np.zeros((num_experts, num_experts), dtype=np.float32)  # [a, e]
        self.out = np.zeros(num_experts, dtype=np.float64)  # row sums of `follows`
        self.last = np.full(num_experts, -np.inf)
        self.prev = np.zeros(0, dtype=np.int64)  # the last finished step's experts
        self.cur = np.zeros(0, dtype=np.int64)  # this step's, so far
        self.recency = recency / num_experts
        # Fading without touching the matrix each step: new counts weigh more and more, and the
        # whole is rescaled now and then.
        self.growth = 2.0 ** (1.0 / half_life)
        self.weight = 1.0

    def tick(self) -> None:
        super().tick()
        if self.cur.size:
            self.prev, self.cur = self.cur, self.cur[:0]
        self.weight *= self.growth
        if self.weight > 1e12:
            self.follows /= np.float32(self.weight)
            self.out /= self.weight
            self.weight = 1.0

    def on_access(self, ids: np.ndarray) -> None:
        if self.cur.size:  # a warm start or a later wave adds to the step
            ids = ids[~np.isin(ids, self.cur)]
            self.cur = np.concatenate([self.cur, ids])
        else:
            self.cur = ids.astype(np.int64)
        if ids.size and self.prev.size:
            self.follows[self.prev[:, None], ids[None, :]] += np.float32(self.weight)
            self.out[self.prev] += self.weight * ids.size
        self.last[ids] = self.clock

    def victims(self, count: int, candidates: np.ndarray) -> np.ndarray:
        if count <= 0:
            return candidates[:0]
        if count >= candidates.size:
            return candidates
        given = self.cur if self.cur.size else self.prev
        mass = float(self.out[given].sum())
        score = self.recency * np.exp2((self.last[candidates] - self.clock) / 8.0)
        if mass > 0:
            score += self.follows[given].sum(axis=0)[candidates] / mass
        # Ties (nothing learned yet) go to the least recently used.
        score += 1e-12 * (self.last[candidates] - self.clock)
        order = np.argpartition(score, count - 1)[:count]
        return candidates[order]


_BY_NAME: dict[str, type[Policy]] = {
    "lru": Policy,
    "lfu": LFU,
    "lfuda": LFUDA,
    "fifo": FIFO,
    "s3fifo": S3FIFO,
    "stale": LeastStale,
    "ahead": Ahead,
    "markov": Markov,
}


def make_policy(name: str, num_experts: int, capacity: int | None = None) -> Policy:
    """A fresh policy by name: one of `POLICIES`; `capacity` is the layer's slots (S3-FIFO sizes
    its queues from it)."""
    try:
        return _BY_NAME[name](num_experts, capacity)
    except KeyError:
        raise ValueError(
            f"unknown cache policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
