"""What the plan says about itself reads right: no more slots than the model has experts, and one
unit of bytes per message."""

import re

import pytest
from mlx_lm.utils import load_model

import moe_core

GB = 10**9


@pytest.fixture(scope="module")
def geometry(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    return moe_core.describe(load_model(path, lazy=True)[0], path)


def units(text: str) -> set[str]:
    return set(re.findall(r"\d (GB|MB|KB)\b", text))


def test_a_roomy_budget_does_not_claim_more_slots_than_experts(geometry):
    budget = moe_core.plan_budget(geometry, memory=16 * GB, backend=moe_core.CPUBackend())
    experts = max(geometry.num_experts)
    assert list(budget.capacity) == list(geometry.num_experts)
    claimed = [int(n) for n in re.findall(r"(\d+) (?:slots|experts|of|per layer)", budget.reason)]
    assert claimed and all(n <= experts for n in claimed), budget.reason
    assert "every expert" in budget.reason
    assert len(units(budget.reason)) == 1, budget.reason


def test_a_tight_budget_names_its_share_of_the_experts(geometry):
    cpu = moe_core.CPUBackend()
    one = moe_core.plan_budget(geometry, capacity=1, backend=cpu)
    fixed = one.base_bytes + one.dense_bytes + one.scratch_bytes
    memory = fixed + 5 * sum(geometry.expert_bytes) + sum(geometry.expert_bytes) // 2
    budget = moe_core.plan_budget(geometry, memory=memory, backend=cpu)
    assert f"5 of {max(geometry.num_experts)} experts per layer" in budget.reason
    assert len(units(budget.reason)) == 1, budget.reason


def test_too_small_says_it_in_one_unit(geometry):
    with pytest.raises(moe_core.BudgetError) as e:
        moe_core.plan_budget(geometry, memory=2 * 10**6, backend=moe_core.CPUBackend())
    assert "too small" in str(e.value)
    assert len(units(str(e.value))) == 1, str(e.value)
