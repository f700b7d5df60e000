"""The lossy `lowbit` miss mode: experts that are not in a slot are computed from resident
low-bit copies while their full weights are read; no step waits for a read, the copies are
counted in the plan, and `exact` is unchanged beside it."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import Future

import mlx.core as mx
import pytest
from _models import greedy, identical, offloaded, prompt, reference, vocab_size
from _peak import CONFIG as PEAK_CONFIG
from _peak import bulk_checkpoint, peak_run
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

import moe_core


class HeldReads:
    """An expert source whose reads land only once `release` is set."""

    def __init__(self, source) -> None:
        self.source = source
        self.release = threading.Event()
        self.started = 0

    def submit(self, bank, loads, dests, **options) -> Future:
        self.started += 1
        done: Future = Future()

        def later() -> None:
            self.release.wait()
            try:
                self.source.submit(bank, loads, dests, **options).result()
            except BaseException as e:
                done.set_exception(e)
            else:
                done.set_result(None)

        threading.Thread(target=later, daemon=True).start()
        return done

    def stats_of(self, bank):
        return self.source.stats_of(bank)


class SteadyCPU(moe_core.CPUBackend):
    """The CPU backend with a fixed process size, so two plans see the same memory."""

    def process_memory(self) -> int:
        return 200 * 1024 * 1024


def agreement(got: list[mx.array], want: list[mx.array]) -> tuple[float, float]:
    """Top-1 agreement and the largest logit difference over every position."""
    same = total = 0
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        same += int((g.argmax(-1) == w.argmax(-1)).sum().item())
        total += g.shape[0] * g.shape[1]
        worst = max(worst, mx.abs(g - w).max().item())
    return same / total, worst


def test_lowbit_never_waits_for_a_read(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=4, miss="lowbit")
    held = HeldReads(handle.store)
    for layer in handle.layers:
        layer.reads.source = held
    tokens = prompt(vocab_size(model), 12)
    done = threading.Event()
    result: dict = {}

    def run() -> None:
        result["logits"], result["tokens"] = greedy(model, tokens, 6)
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    # Every read is held, so a step that waited for one would never finish.
    finished = done.wait(timeout=30)
    held.release.set()
    worker.join(timeout=60)
    assert finished, "a lowbit step waited for a read"
    assert held.started > 0  # the misses' full weights were being read meanwhile
    stats = handle.stats()
    assert stats["lossy"] and stats["miss"] == "lowbit"
    assert stats["lowbit"] == stats["misses"] > 0
    assert all(bool(mx.isfinite(x).all()) for x in result["logits"])


def test_lowbit_reads_misses_for_later_steps(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=10**6, miss="lowbit")
    tokens = prompt(vocab_size(model), 8)
    first = model(tokens)
    mx.eval(first)
    cold = handle.stats()
    assert cold["lowbit"] == cold["misses"] > 0 and cold["hits"] == 0
    # Each pass reads what it missed; a lossy layer changes what the layers after it pick, so
    # a pass is exact up to one layer further than the one before, until nothing is missed.
    layers = len(handle.capacity)
    for _ in range(layers + 1):
        handle.reset_stats()  # joins the reads in flight
        again = model(tokens)
        mx.eval(again)
        if handle.stats()["misses"] == 0:
            break
    assert handle.stats()["misses"] == 0
    want = reference(path)(tokens)
    assert mx.array_equal(again, want).item()
    assert not mx.array_equal(first, want).item()


def test_lowbit_against_the_unmodified_model(moe_checkpoint, record_property):
    """Measured, not asserted equal: lowbit's logits next to skip's, against the unmodified
    model, from the same resident experts."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q8", num_experts=16)
    tokens = prompt(32, 16, seed=1)
    want = [reference(path)(tokens)]
    rows = {}
    for miss in ("exact", "skip", "lowbit"):
        model, handle = offloaded(path, capacity=4, miss=miss)
        if miss != "exact":
            handle.prefetch({layer: [0, 1, 2, 3] for layer in range(len(handle.capacity))})
            handle.reset_stats()
        got = [model(tokens)]
        mx.eval(got)
        rows[miss] = agreement(got, want)
        if miss == "exact":
            assert identical(got, want)
    record_property("top1_and_max_logit_error", json.dumps(rows))
    print(rows)
    # The copies answer what skip drops: closer to the unmodified model than dropping.
    assert rows["lowbit"][1] < rows["skip"][1]
    assert rows["lowbit"][0] >= rows["skip"][0]


def test_copies_take_what_the_plan_says(moe_checkpoint):
    path = moe_checkpoint("mixtral", "stacked", "q4")
    _model, handle = offloaded(path, capacity=2, miss="lowbit")
    plan = handle.plan
    assert plan.lowbit_bits == moe_core.LOWBIT_BITS
    for layer, planned in zip(handle.layers, plan.lowbit_bytes, strict=True):
        made = sum(a.nbytes for _, a in tree_flatten(layer.miss.copies.parameters()))
        assert made == planned
        assert layer.miss.copies.gate_proj.bits == moe_core.LOWBIT_BITS
    assert "LOSSY" in plan.reason and "full slots per layer" in plan.reason
    assert tuple(handle.stats()["budget"]["lowbit_bytes"]) == plan.lowbit_bytes


def test_copies_come_out_of_the_budget(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, _ = load_model(path, lazy=True)
    geometry = moe_core.describe(model, path)
    cpu = SteadyCPU()
    per_slot = sum(geometry.expert_bytes)
    plain = moe_core.plan_budget(geometry, capacity=1, backend=cpu)
    memory = plain.base_bytes + plain.dense_bytes + plain.scratch_bytes + 14 * per_slot
    exact = moe_core.plan_budget(geometry, memory=memory, backend=cpu)
    low = moe_core.plan_budget(geometry, memory=memory, backend=cpu, lowbit_bits=2)
    assert not exact.lowbit_bytes and exact.lowbit_bits == 0
    copies = sum(low.lowbit_bytes)
    assert copies > 0 and exact.capacity == (14, 14)
    # The copies' bytes are taken before the slots', never on top of the budget.
    assert low.slot_bytes + copies <= exact.slot_bytes
    assert exact.capacity[0] - low.capacity[0] == -(-copies // per_slot)
    with pytest.raises(ValueError, match="counts its low-bit copies"):
        moe_core.offload(model, path, exact, miss="lowbit")


def test_exact_and_skip_plans_have_no_copies(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    tokens = prompt(64, 10)
    for miss in ("exact", "skip"):
        model, handle = offloaded(path, capacity=2, miss=miss)
        assert handle.plan.lowbit_bytes == () and handle.stats()["lowbit"] == 0
        if miss == "exact":
            assert identical(greedy(model, tokens, 3)[0], greedy(reference(path), tokens, 3)[0])


# The memory test's geometry at half its width.
CONFIG = PEAK_CONFIG | dict(
    hidden_size=512, intermediate_size=512, moe_intermediate_size=512, num_attention_heads=4
)
BUDGET = 640 * 1024 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM")
def test_peak_memory_stays_under_budget_with_the_copies(tmp_path):
    path, experts = bulk_checkpoint(CONFIG, tmp_path)
    result = peak_run(path, BUDGET, miss="lowbit")
    assert result["finite"] and result["lowbit"] > 0
    assert result["peak"] < BUDGET, result
    # Without counting the copies, the slots alone would have filled the budget.
    assert result["copies"] > BUDGET // 3
    assert 4 <= min(result["capacity"]) < CONFIG["num_experts"]
    assert experts > BUDGET // 2
