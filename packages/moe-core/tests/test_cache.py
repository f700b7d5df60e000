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
