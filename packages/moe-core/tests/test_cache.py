import numpy as np
import pytest

from moe_core import POLICIES, BudgetError, ExpertCache


def run(cache: ExpertCache, steps):
    for needed in steps:
        waves = list(cache.step(np.unique(np.asarray(needed, dtype=np.int64))))
        yield waves


def test_hits_and_misses_are_counted_once_per_step():
    cache = ExpertCache(8, 4, "lru")
    list(run(cache, [[0, 1], [1, 2], [0, 3]]))
    assert (cache.stats.hits, cache.stats.misses) == (2, 4)
    assert set(cache.resident().tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("policy", POLICIES)
def test_current_step_is_never_evicted(policy):
    rng = np.random.default_rng(0)
    cache = ExpertCache(16, 4, policy)
    for _ in range(200):
        needed = np.unique(rng.choice(16, size=rng.integers(1, 5), replace=False))
        before = set(cache.resident().tolist())
        (wave,) = cache.step(needed)  # always fits: at most 4 needed
        assert set(needed.tolist()) <= set(cache.resident().tolist())
        assert sorted(e for e, _ in wave.loads) == sorted(set(needed.tolist()) - before)


def test_lru_evicts_least_recent():
    cache = ExpertCache(8, 2, "lru")
    list(run(cache, [[0], [1], [0], [2]]))
    assert set(cache.resident().tolist()) == {0, 2}


def test_lfu_keeps_frequent():
    cache = ExpertCache(8, 2, "lfu")
    list(run(cache, [[0], [0], [0], [1], [2]]))
    assert 0 in cache.resident().tolist()


def test_pinned_experts_stay():
    cache = ExpertCache(8, 3, "lru")
    loads = cache.pin(np.array([5]))
    assert [e for e, _ in loads] == [5]
    list(run(cache, [[0, 1], [2, 3], [4, 6], [7, 0]]))
    assert 5 in cache.resident().tolist()
    with pytest.raises(BudgetError):
        cache.pin(np.array([0, 1, 2]))


def test_waves_load_each_expert_once_and_cover_all():
    cache = ExpertCache(16, 3, "lfuda")
    cache.pin(np.array([9]))
    needed = np.arange(10, dtype=np.int64)
    waves = []
    for wave in cache.step(needed):
        # every expert of a wave is resident while it runs, next to the pinned one
        assert set(wave.experts.tolist()) <= set(cache.resident().tolist())
        assert 9 in cache.resident().tolist()
        waves.append(wave)
    covered = np.concatenate([w.experts for w in waves])
    assert sorted(covered.tolist()) == list(range(10))
    loaded = [e for w in waves for e, _ in w.loads]
    assert sorted(loaded) == list(range(9))  # 9 was pinned, so already resident
    assert cache.stats.misses == 9 and cache.stats.hits == 1


def test_prefetch_does_not_count_as_miss():
    cache = ExpertCache(8, 4, "lfuda")
    loads = cache.prefetch(np.array([1, 2, 3]))
    assert len(loads) == 3 and cache.stats.misses == 0
    list(run(cache, [[1, 2]]))
    assert cache.stats.hits == 2


def test_bad_capacity():
    with pytest.raises(BudgetError):
        ExpertCache(8, 0)
    with pytest.raises(ValueError, match="unknown cache policy"):
        ExpertCache(8, 2, "nope")


def test_s3fifo_drops_experts_used_once_before_reused_ones():
    # 10 slots: small holds 1. Experts 0-8 are used twice, then a stream of one-off experts
    # passes through small without pushing them out of main.
    cache = ExpertCache(64, 10, "s3fifo")
    list(run(cache, [[e] for e in range(9)] + [[e] for e in range(9)]))
    list(run(cache, [[e] for e in range(20, 40)]))
    assert set(range(9)) <= set(cache.resident().tolist())
    # A one-off that comes back while its id is in the ghost queue goes straight to main.
    list(run(cache, [[38], [41], [42]]))
    assert 38 in cache.resident().tolist()


def test_least_stale_keeps_experts_loaded_ahead_until_used():
    cache = ExpertCache(16, 3, "stale")
    list(run(cache, [[0], [1]]))
    cache.predict(np.array([5]))  # loaded ahead, not used yet: fresh
    list(run(cache, [[2], [3]]))  # stale 0 and 1 leave first, then the older of 2
    assert 5 in cache.resident().tolist()
    list(run(cache, [[5], [6], [7], [8]]))  # once used, 5 is stale like any other
    assert 5 not in cache.resident().tolist()


def test_ahead_protects_a_prediction_until_its_step_and_does_not_count_it():
    cache = ExpertCache(16, 3, "ahead")
    list(run(cache, [[0], [0], [1], [1]]))
    cache.predict(np.array([2]))  # loads 2 into the free slot
    assert cache.stats.misses == 2 and cache.stats.prefetched == 1
    list(run(cache, [[3]]))  # 2 was not picked; 3 must evict: not the prediction
    assert 2 in cache.resident().tolist()
    list(run(cache, [[4]]))  # the predicted step is over: the unused guess (count 0) goes
    assert 2 not in cache.resident().tolist()


def test_markov_learns_a_cycle_that_lru_thrashes():
    # Experts 0, 1, 2, 3 in turn through 3 slots: LRU always evicts the next one.
    steps = [[i % 4] for i in range(400)]
    rates = {}
    for policy in ("lru", "markov"):
        cache = ExpertCache(8, 3, policy)
        list(run(cache, steps))
        rates[policy] = cache.stats.hits / (cache.stats.hits + cache.stats.misses)
    assert rates["lru"] == 0.0
    assert rates["markov"] > 0.45


def test_a_prediction_is_read_ahead_but_not_counted_as_a_use():
    cache = ExpertCache(8, 2, "lru")
    list(run(cache, [[0], [1]]))
    loads = cache.predict(np.array([1, 2]))  # 1 is resident; 2 evicts 0, the older
    assert [e for e, _ in loads] == [2] and cache.stats.misses == 2
    list(run(cache, [[3]]))  # 2 was guessed, never used: older than 1's use
    assert set(cache.resident().tolist()) == {1, 3}


def test_the_window_compares_the_recent_steps_with_belady():
    from moe_core import optimal_hits

    rng = np.random.default_rng(3)
    cache = ExpertCache(32, 8, "lru")
    cache.recent = type(cache.recent)(size=64)
    steps = [np.unique(rng.zipf(1.3, size=4) % 32).astype(np.int64) for _ in range(200)]
    hits = []
    for needed in steps:
        before = cache.stats.hits
        list(cache.step(needed))
        hits.append(cache.stats.hits - before)
    w = cache.window()
    kept = steps[-64:]
    assert w.steps == 32 and w.lookups == sum(s.size for s in kept[32:])
    assert w.hits == sum(hits[-32:]) and w.reads == w.lookups - w.hits
    assert w.belady_hits == optimal_hits(kept, 8, count_from=32)[0]
    assert w.read_hits <= w.belady_hits
    # Cached until half a window of new steps has come in.
    list(cache.step(steps[0]))
    assert cache.window() is w
    for needed in steps[:32]:
        list(cache.step(needed))
    assert cache.window() is not w
    cache.reset_stats()
    assert cache.window() is None


def test_the_window_counts_a_read_ahead_as_a_read():
    cache = ExpertCache(16, 4, "lru")
    for e in range(6):
        cache.predict(np.array([e]))  # guessed right every time: served, but read
        list(cache.step(np.array([e])))
    w = cache.window()
    assert w.hits == w.lookups == 3 and w.reads == 3 and w.read_hits == 0
    assert w.belady_hits == 0  # every expert was new: no read could be saved


def test_one_stats_call_replays_the_window_of_a_few_layers_only():
    from moe_core._window import REFRESH_LAYERS, RecentSteps, compare_layers

    recent = [RecentSteps(size=8) for _ in range(REFRESH_LAYERS + 3)]
    for r in recent:
        for e in range(10):
            r.add(np.array([e % 3]), 1, 0)
    first = compare_layers(recent, [2] * len(recent))
    assert sum(w is not None for w in first) == REFRESH_LAYERS
    second = compare_layers(recent, [2] * len(recent))  # the rest now, the others cached
    assert all(w is not None for w in second)
    assert [a is b for a, b in zip(first, second, strict=True) if a] == [True] * REFRESH_LAYERS
