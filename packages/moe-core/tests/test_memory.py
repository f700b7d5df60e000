"""The memory budget is a promise: a checkpoint whose experts are several times the budget runs
with the process's peak resident memory (VmHWM) under it, during load and generation."""

import sys

import pytest
from _peak import CONFIG, bulk_checkpoint, peak_run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM")

BUDGET = 400 * 1024 * 1024


def test_peak_memory_stays_under_budget_with_experts_four_times_larger(tmp_path):
    path, expert_bytes = bulk_checkpoint(CONFIG, tmp_path)
    assert expert_bytes > 4 * BUDGET
    result = peak_run(path, BUDGET)
    assert result["finite"]
    assert result["peak"] < BUDGET, result
    assert 4 <= min(result["capacity"]) < CONFIG["num_experts"]
    assert result["bytes_read"] > 0


def test_budget_too_small_says_the_minimum(tmp_path):
    path, _ = bulk_checkpoint(CONFIG, tmp_path)
    from mlx_lm.utils import load_model

    import moe_core

    model, _ = load_model(path, lazy=True)
    with pytest.raises(moe_core.BudgetError, match="needs at least"):
        moe_core.offload(model, path, memory=120 * 1024 * 1024)
