"""What the budget plan reserves besides the slots: Qwen3-Next's prefill states, and on CUDA room
for a prefill chunk's freed buffers in MLX's cache (MLX's own limit is not held at the budget)."""

import dataclasses

import pytest
from mlx_lm.utils import load_model

import moe_core

GB = 1 << 30


def test_the_plan_counts_linear_attention_states(moe_checkpoint):
    path = moe_checkpoint("qwen3_next", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    geometry = moe_core.describe(model, path)
    args = model.args
    per_token = (
        args.linear_num_value_heads * args.linear_key_head_dim * args.linear_value_head_dim * 4
    )
    assert geometry.state_bytes_per_token == per_token
    without = dataclasses.replace(geometry, state_bytes_per_token=0)
    cpu = moe_core.CPUBackend()
    with_states = moe_core.plan_budget(geometry, memory=GB, backend=cpu)
    plain = moe_core.plan_budget(without, memory=GB, backend=cpu)
    assert with_states.scratch_bytes - plain.scratch_bytes == 512 * per_token


def test_families_without_linear_attention_reserve_no_states(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    assert moe_core.describe(model, path).state_bytes_per_token == 0


def test_cuda_reserves_a_prefill_chunk_of_cache(moe_checkpoint):
    path = moe_checkpoint("qwen3_next", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    geometry = moe_core.describe(model, path)
    cpu = moe_core.plan_budget(geometry, memory=GB, backend=moe_core.CPUBackend())
    cuda = moe_core.plan_budget(geometry, memory=GB, backend=moe_core.CUDABackend())
    activations = cpu.scratch_bytes - 64 * 1024 * 1024 * 2  # margin and the CPU's cache reserve
    assert cuda.scratch_bytes - cpu.scratch_bytes == max(0, activations - 64 * 1024 * 1024)


def test_cuda_lowers_mlx_limit_to_the_free_memory_and_never_raises_it(monkeypatch):
    limit = [80 * GB]

    def set_memory_limit(value):
        previous, limit[0] = limit[0], value
        return previous

    monkeypatch.setattr(moe_core._backend.mx, "set_memory_limit", set_memory_limit)
    cuda = moe_core.CUDABackend()
    monkeypatch.setattr(moe_core.CUDABackend, "available_memory", lambda self: 135 * GB)
    cuda.set_limits(16 * GB)
    assert limit[0] == 80 * GB  # MLX's default is under the free memory: left as it was
    monkeypatch.setattr(moe_core.CUDABackend, "available_memory", lambda self: 36 * GB)
    cuda.set_limits(16 * GB)
    assert limit[0] == 32 * GB


def test_cuda_warns_when_the_budget_is_more_than_the_card_has_free(monkeypatch):
    monkeypatch.setattr(moe_core._backend.mx, "set_memory_limit", lambda value: 1 << 60)
    monkeypatch.setattr(moe_core.CUDABackend, "available_memory", lambda self: 10 * GB)
    with pytest.warns(UserWarning, match="more than the GPU has free"):
        moe_core.CUDABackend().set_limits(16 * GB)
