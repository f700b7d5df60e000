"""The memory budget on the CPU backend, with a fake /proc and cgroup tree: the session keeps KV
headroom for its max_context free, and the cgroup limit wins over MemAvailable."""

from __future__ import annotations

import mlx.core as mx
import pytest

from moe_core import CPUBackend
from moe_runtime import Session

GB = 1 << 30


@pytest.fixture
def mlx_limits():
    # The session sets MLX's limits to the (fake) budget; put the real ones back afterwards.
    memory = mx.get_memory_limit()
    cache = mx.set_cache_limit(mx.get_memory_limit())
    yield
    mx.set_memory_limit(memory)
    mx.set_cache_limit(cache)


def fake_machine(root, *, version: int, limit: int, available: int = 20 * GB, rss: int = 50 << 20):
    proc, cgroup = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 25000000 kB\nMemAvailable: {available // 1024} kB\n")
    (proc / "self" / "status").write_text(f"VmRSS:\t{rss // 1024} kB\nVmHWM:\t{rss // 1024} kB\n")
    if version == 2:
        (proc / "self" / "cgroup").write_text("0::/user.slice/job\n")
        group = cgroup / "user.slice" / "job"
        group.mkdir(parents=True)
        (group / "memory.max").write_text(f"{limit}\n")
        (cgroup / "user.slice" / "memory.max").write_text("max\n")
    else:
        (proc / "self" / "cgroup").write_text("5:cpu,cpuacct:/job\n4:memory:/job\n")
        group = cgroup / "memory" / "job"
        group.mkdir(parents=True)
        (group / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (cgroup / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 62}\n")
    return CPUBackend(proc=proc, cgroup=cgroup)


def open_session(path, backend, tmp_path, **kw):
    # No snapshots kept besides the live cache: the reserve is the KV cache's alone.
    kw.setdefault("prompt_cache_memory", 0)
    return Session(path, backend=backend, cache_dir=tmp_path / "cache", warm_start=False, **kw)


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_limit_sets_the_budget(ref, checkpoint, tmp_path, version, mlx_limits):
    path = checkpoint("qwen3_moe")
    # First learn the fixed costs under a roomy limit, then cap the cgroup at 5 slots per layer.
    roomy = fake_machine(tmp_path / "a", version=version, limit=4 * GB)
    with open_session(path, roomy, tmp_path) as s:
        b = s.handle.plan
        assert b.memory == 4 * GB and b.reserve_bytes == s.kv.reserve_bytes > 0
        fixed = b.base_bytes + b.dense_bytes + b.scratch_bytes + b.reserve_bytes
        per_slot = sum(b.expert_bytes)
        per_token = s.kv.bytes_per_token
    limit = fixed + 5 * per_slot + per_slot // 2
    backend = fake_machine(tmp_path / "b", version=version, limit=limit)
    assert backend.cgroup_limit() == limit < backend.available_memory() + 1
    with open_session(path, backend, tmp_path) as s:
        stats = s.stats()
        assert stats["budget"]["memory"] == limit
        assert list(stats["budget"]["capacity"]) == [5] * len(s.handle.capacity)
        assert "available on cpu" in stats["budget"]["reason"]
        assert stats["kv"]["reserve_bytes"] == stats["budget"]["reserve_bytes"]
        messages = [{"role": "user", "content": "hello"}]
        assert ref.run(s, messages, 6) == ref.tokens(path, messages, 6)
    # A shorter max_context reserves less KV headroom, which leaves more slots.
    shorter = b.reserve_bytes // per_token - (per_slot // 2) // per_token - 1
    with open_session(path, backend, tmp_path, max_context=shorter) as s:
        assert s.handle.plan.reserve_bytes < b.reserve_bytes
        assert s.handle.capacity == [6] * len(s.handle.capacity)


def test_memory_given_as_text(checkpoint, tmp_path, mlx_limits):
    backend = fake_machine(tmp_path, version=2, limit=8 * GB)
    with open_session(checkpoint("qwen3_moe"), backend, tmp_path, memory="1GB") as s:
        assert s.handle.plan.memory == 10**9
        assert "given" in s.handle.plan.reason


def test_lowbit_copies_come_out_of_the_session_budget(checkpoint, tmp_path, mlx_limits):
    """The lossy lowbit mode's copies are planned from the same memory: fewer full slots than
    exact at the same budget, by what the plan says they cost."""
    path = checkpoint("qwen3_moe")
    backend = fake_machine(tmp_path, version=2, limit=8 * GB)
    with open_session(path, backend, tmp_path, capacity=1) as s:
        b = s.handle.plan
        fixed = b.base_bytes + b.dense_bytes + b.scratch_bytes + b.reserve_bytes
        per_slot = sum(b.expert_bytes)
    memory = fixed + 15 * per_slot
    with open_session(path, backend, tmp_path, memory=memory) as s:
        exact = s.handle.plan
    with open_session(path, backend, tmp_path, memory=memory, miss="lowbit") as s:
        low = s.handle.plan
        copies = sum(low.lowbit_bytes)
        assert copies > 0 and "LOSSY" in low.reason
        assert exact.capacity[0] - low.capacity[0] == -(-copies // per_slot)
        assert low.slot_bytes + copies <= exact.slot_bytes
        s.generate([{"role": "user", "content": "hello"}], max_tokens=4)
        stats = s.stats()
        assert stats["lossy"] and stats["miss"] == "lowbit" and stats["lowbit"] > 0


def test_a_host_tier_through_the_session(ref, checkpoint, tmp_path, mlx_limits):
    """Where the GPU has memory of its own (a staged CPU backend stands in): `host_memory` sizes
    the second tier, and the session's text equals the unmodified model's."""
    path = checkpoint("qwen3_moe")
    staged = CPUBackend(unified_memory=False, full_shape_waves=True)
    with open_session(path, staged, tmp_path, capacity=4, host_memory="1GB") as s:
        stats = s.stats()
        assert stats["host_tier"] and stats["budget"]["host_memory"] == 10**9
        assert list(stats["budget"]["host_capacity"]) == s.handle.num_experts
        messages = [{"role": "user", "content": "hello"}]
        assert ref.run(s, messages, 6) == ref.tokens(path, messages, 6)
        assert s.stats()["host_hits"] + s.stats()["host_misses"] > 0


def test_host_memory_is_refused_where_there_is_one_memory(checkpoint, tmp_path, mlx_limits):
    import moe_core

    with pytest.raises(moe_core.BudgetError, match="--host-memory is for CUDA"):
        open_session(checkpoint("qwen3_moe"), CPUBackend(), tmp_path, host_memory="1GB")
