"""CUDA's paths, exercised on the CPU backend: experts read into host rows and uploaded in
batches, the host tier between the GPU's slots and storage, exact waves called with the full
step's shape, a step's hits computed while its misses load, and reads that bypass the page
cache. Each is compared with the unmodified model: tokens and logits identical."""

import mlx.core as mx
import numpy as np
import pytest
from _models import greedy, identical, offloaded, prompt, reference, vocab_size
from mlx_lm.utils import load_model

import moe_core
from moe_core._host import HostRows, row_bytes
from moe_core._store import ExpertStore

# A GPU stand-in: host rows and uploads, waves of the full shape.
STAGED = moe_core.CPUBackend(unified_memory=False, full_shape_waves=True)


def geometry_of(path):
    model, _ = load_model(path, lazy=True)
    return moe_core.describe(model, path)


def host_bytes(path, rows: int) -> int:
    """Host memory for a tier of `rows` experts in every MoE layer."""
    return rows * sum(row_bytes(bank) for bank in geometry_of(path).banks)


def same_as_reference(path, steps=10, **kwargs):
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 40)
    want, want_tokens = greedy(ref, tokens, steps)
    model, handle = offloaded(path, **kwargs)
    got, got_tokens = greedy(model, tokens, steps)
    assert got_tokens == want_tokens
    assert identical(got, want)
    return model, handle, tokens


@pytest.mark.parametrize("staged", [False, True])
@pytest.mark.parametrize(
    ("family", "layout", "precision"),
    [("qwen3_next", "stacked", "q4"), ("qwen3_moe", "per_expert", "f32")],
)
def test_full_shape_waves_are_identical(moe_checkpoint, family, layout, precision, staged):
    path = moe_checkpoint(family, layout, precision)
    backend = STAGED if staged else moe_core.CPUBackend(full_shape_waves=True)
    top_k = max(geometry_of(path).top_k)
    _, handle, _ = same_as_reference(path, capacity=top_k, backend=backend)
    stats = handle.stats()
    assert all(layer["waves"] > layer["steps"] for layer in stats["layers"])
    assert all(layer.miss.full_shape for layer in handle.layers)
    handle.close()


def test_host_tier_partly_full_is_identical_and_reads_only_its_misses(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4", num_experts=32)
    experts, top_k = 32, max(geometry_of(path).top_k)
    rows = 20  # between the GPU's slots and the layer's experts
    _, handle, _ = same_as_reference(
        path, capacity=top_k * 2, backend=STAGED, host_memory=host_bytes(path, rows)
    )
    assert handle.plan.host_capacity == (rows,) * len(handle.layers) and rows < experts
    stats = handle.stats()
    assert stats["host_tier"] and stats["host_hits"] > 0 and stats["host_misses"] > 0
    assert stats["host_evictions"] > 0  # the tier filled and had to choose
    for layer in stats["layers"]:
        expert_bytes = handle.layers[layer["layer"]].map.expert_bytes
        # Storage is read only for what the tier lacked, once each time.
        assert layer["bytes_read"] == expert_bytes * layer["host_misses"]
        assert layer["host_resident"] <= rows
        assert layer["uploaded_bytes"] == expert_bytes * (layer["misses"] + layer["prefetched"])
    handle.close()


def test_a_second_request_reads_nothing_the_tier_holds(moe_checkpoint):
    """A tier as large as the layer's experts keeps each one read: the second request's misses
    are all served from it."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4", num_experts=32)
    top_k = max(geometry_of(path).top_k)
    model, handle, tokens = same_as_reference(
        path, capacity=top_k * 2, backend=STAGED, host_memory=host_bytes(path, 32)
    )
    first = handle.stats()
    assert first["host_misses"] > 0 and first["bytes_read"] > 0
    handle.reset_stats()
    greedy(model, tokens, 10)
    again = handle.stats()
    assert again["misses"] > 0  # the GPU's slots still miss ...
    assert again["bytes_read"] == 0 and again["host_misses"] == 0  # ... and the tier serves them
    assert again["host_hits"] == again["misses"] + sum(
        layer["prefetched"] for layer in again["layers"]
    )
    handle.close()


def test_demoted_experts_come_back_identical(moe_checkpoint):
    """Experts copied down from the slots (not read again from storage) are the same bytes."""
    path = moe_checkpoint("qwen3_next", "stacked", "q4", num_experts=32)
    top_k = max(geometry_of(path).top_k)
    _, handle, _ = same_as_reference(
        path, capacity=top_k, backend=STAGED, host_memory=host_bytes(path, 24)
    )
    assert handle.stats()["host_demoted"] > 0
    handle.close()


def test_hits_computed_while_misses_load_are_identical(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4", num_experts=32)
    ref = reference(path)
    tokens = prompt(vocab_size(ref), 40)
    want, want_tokens = greedy(ref, tokens, 12)
    model, handle = offloaded(path, capacity=12, backend=STAGED, lookahead=False)
    for layer in handle.layers:
        layer.miss.overlap = True
    got, got_tokens = greedy(model, tokens, 12)
    assert got_tokens == want_tokens and identical(got, want)
    stats = handle.stats()
    assert stats["misses"] > 0 and stats["hits"] > 0
    handle.close()


@pytest.mark.parametrize("o_direct", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_reads_that_bypass_the_page_cache_land_the_same_bytes(
    moe_checkpoint, tmp_path, monkeypatch, o_direct, packed
):
    """Into a host tier, reads use O_DIRECT where the file system takes it (else a plain read
    whose pages are dropped): the bytes equal a plain read's, for every expert."""
    import shutil

    import moe_core._store

    if not o_direct:
        monkeypatch.setattr(moe_core._store, "_direct_reads", lambda fd: False)
    path = tmp_path / "ckpt"
    shutil.copytree(moe_checkpoint("qwen3_moe", "stacked", "q4"), path)
    geometry = geometry_of(path)
    banks = list(geometry.banks)
    if packed:
        from moe_core._pack import open_pack

        model, _ = load_model(path, lazy=True)
        banks = open_pack(moe_core.pack(model, path), banks, geometry.fingerprint)
    store = ExpertStore(banks, threads=2)
    for bank in banks:
        experts = bank.num_experts
        plain = [np.zeros((experts, p.nbytes), dtype=np.uint8) for p in bank.params]
        store.read(bank, [(e, e) for e in range(experts)], plain)
        rows = HostRows(bank, experts)
        store.submit(bank, [(e, e) for e in range(experts)], rows, direct=True).result()
        for e in range(experts):
            for view, want in zip(rows.views(e), plain, strict=True):
                assert np.array_equal(view, want[e])
    if o_direct:  # on a file system that takes O_DIRECT, it was used
        opened = [fd for fd in store._direct.values()]
        assert opened and (all(fd is not None for fd in opened) or not _o_direct_works(path))
    store.close()


def _o_direct_works(path) -> bool:
    import os

    try:
        fd = os.open(next(path.glob("*.safetensors")), os.O_RDONLY | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


def test_lookahead_predicts_in_the_layer_sync(moe_checkpoint, monkeypatch):
    """The next layer's prediction comes to the host with this layer's routing, in one sync:
    the reader never converts an MLX array itself. Its reads are counted apart, and how well
    it named the next step's experts is kept per layer."""
    import moe_core._reads

    class NoSync:
        def __getattr__(self, name):
            return getattr(np, name)

        def array(self, value, *args, **kwargs):
            assert not isinstance(value, mx.array), "the reader synced with the device"
            return np.array(value, *args, **kwargs)

    monkeypatch.setattr(moe_core._reads, "np", NoSync())
    path = moe_checkpoint("qwen3_moe", "stacked", "q4", num_experts=32)
    _, handle, _ = same_as_reference(path, capacity=12, lookahead=True)
    stats = handle.stats()
    assert sum(layer["lookahead_predicted"] for layer in stats["layers"]) > 0
    assert stats["ahead_bytes"] > 0
    for layer in stats["layers"]:
        expert_bytes = handle.layers[layer["layer"]].map.expert_bytes
        assert layer["ahead_bytes"] == expert_bytes * layer["prefetched"]
        assert 0.0 <= layer["prediction_precision"] <= 1.0
        assert 0.0 <= layer["prediction_recall"] <= 1.0
    predicted = stats["layers"][1]
    assert predicted["prediction_used"] > 0 and predicted["prediction_recall"] > 0
    handle.close()


def test_host_memory_is_refused_where_there_is_one_memory(moe_checkpoint):
    geometry = geometry_of(moe_checkpoint("qwen3_moe", "stacked", "q4"))
    with pytest.raises(moe_core.BudgetError, match="--host-memory is for CUDA"):
        moe_core.plan_budget(geometry, capacity=4, host_memory="1GB", backend=moe_core.CPUBackend())


def test_host_tier_sizes(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4", num_experts=32)
    geometry = geometry_of(path)
    per_row = sum(row_bytes(bank) for bank in geometry.banks)
    plan = moe_core.plan_budget(geometry, capacity=8, host_memory=per_row * 20, backend=STAGED)
    assert plan.host_capacity == (20, 20) and "host tier (given)" in plan.reason
    # Larger than the model: every expert, no more.
    plan = moe_core.plan_budget(geometry, capacity=8, host_memory="10GB", backend=STAGED)
    assert plan.host_capacity == (32, 32) and "every expert" in plan.reason
    # 0: none; no larger than the slots: refused with the size that would do.
    for none in (0, "0", "0GB"):
        plan = moe_core.plan_budget(geometry, capacity=8, host_memory=none, backend=STAGED)
        assert plan.host_capacity == () and plan.host_memory == 0
    plan = moe_core.plan_budget(
        geometry, capacity=8, host_memory="0", backend=moe_core.CPUBackend()
    )
    assert plan.host_capacity == ()
    with pytest.raises(moe_core.BudgetError, match="no more than the GPU's slots: give at least"):
        moe_core.plan_budget(geometry, capacity=8, host_memory=per_row * 8, backend=STAGED)
    # Default: half of what the host has available, whatever of it the model can use.
    plan = moe_core.plan_budget(geometry, capacity=8, backend=STAGED)
    available = moe_core.CPUBackend().available_memory()
    assert plan.host_memory == pytest.approx(available // 2, rel=0.05)
    assert plan.host_capacity == (32, 32) and "half of the host's available" in plan.reason


def test_the_shared_copy_stream_is_made_without_deadlock(monkeypatch):
    """shared_stream() once held the module's lock while driver() took it again: every CUDA
    upload hung on its first use. Checked with a stand-in driver (no GPU here)."""
    import threading

    from moe_core import _cuda

    class Stand:
        def stream(self):
            return "stream"

    monkeypatch.setattr(_cuda, "_driver", Stand())
    monkeypatch.setattr(_cuda, "_stream", None)
    got = []
    worker = threading.Thread(target=lambda: got.append(_cuda.shared_stream()), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert got == ["stream"]
