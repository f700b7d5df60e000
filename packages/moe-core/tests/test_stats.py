"""Statistics are kept by whoever does the work and only read from outside; observers listen side
by side, each told what it listens for."""

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from _models import greedy, offloaded, prompt, vocab_size


def test_each_layer_is_charged_its_own_reads(moe_checkpoint):
    """With lookahead, a layer's reads are started by the layer before it and land while other
    layers read: per layer, bytes and seconds are those of its own batches, which add up to
    the store's totals."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=12, lookahead=True)
    greedy(model, prompt(vocab_size(model), 12), 12)
    stats = handle.stats()
    layers = stats["layers"]
    assert sum(layer["lookahead_predicted"] for layer in layers) > 0
    assert sum(layer["bytes_read"] for layer in layers) == stats["bytes_read"]
    assert sum(layer["read_seconds"] for layer in layers) == pytest.approx(stats["read_seconds"])
    for layer in layers:
        expert_bytes = handle.layers[layer["layer"]].map.expert_bytes
        assert layer["bytes_read"] == expert_bytes * (layer["misses"] + layer["prefetched"])
    handle.close()


class _Events:
    """Counts every event but steps."""

    def __init__(self, layers):
        self.counts = [0] * layers
        self.reads = [0] * layers
        self.evictions = [0] * layers

    def on_counts(self, layer, counts):
        self.counts[layer] += int(counts.sum())

    def on_reads(self, layer, experts):
        self.reads[layer] += experts.size

    def on_evictions(self, layer, experts):
        self.evictions[layer] += experts.size


def test_observers_listen_side_by_side(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=4)
    layers = len(handle.capacity)
    steps = [[] for _ in range(layers)]
    recorder = handle.observe(SimpleNamespace(on_step=lambda layer, ids: steps[layer].append(ids)))
    events = handle.observe(_Events(layers))
    tokens = prompt(vocab_size(model), 6)
    greedy(model, tokens, 4)
    stats = handle.stats()
    top_k = model.args.num_experts_per_tok
    for layer, row in enumerate(stats["layers"]):
        assert sum(ids.size for ids in steps[layer]) == events.counts[layer] == 10 * top_k
        assert events.reads[layer] == row["misses"] + row["prefetched"]
        assert events.evictions[layer] == row["evictions"] > 0
    handle.unobserve(recorder)
    model(tokens)
    assert sum(ids.size for ids in steps[0]) == 10 * top_k  # no longer told
    assert events.counts[0] == 16 * top_k
    handle.close()


def test_counting_observers_keep_the_sync_free_path(moe_checkpoint):
    """Counts, reads and evictions cost no host sync: a layer holding every expert still
    resolves slots on the device while such observers listen."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=10**6)
    events = handle.observe(_Events(len(handle.capacity)))
    _, out = greedy(model, prompt(vocab_size(model), 1), 6)
    assert all(layer.slots.table is not None for layer in handle.layers)
    hits = handle.stats()["hits"]
    mx.eval(model(mx.array([[out[-1]]])))
    handle.flush_counts()
    top_k = model.args.num_experts_per_tok
    assert handle.stats()["hits"] == hits + top_k * len(handle.capacity)
    assert events.counts == [8 * top_k] * len(handle.capacity)
    assert np.all(np.array(events.evictions) == 0)
    handle.close()


def test_stats_without_the_window_replay_nothing(moe_checkpoint):
    """`stats(window=False)` gives the same counters without replaying Belady over any layer's
    recent steps (the one costly part, which a caller asking often may not need)."""
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    model, handle = offloaded(path, capacity=4)
    greedy(model, prompt(vocab_size(model), 12), 6)
    recent = [layer.cache.recent for layer in handle.layers]
    waiting = [r.waiting for r in recent]
    lean = handle.stats(window=False)
    assert lean["window"] is None
    assert [r.waiting for r in recent] == waiting  # nothing was replayed
    full = handle.stats()
    assert full["window"] is not None and [r.waiting for r in recent] != waiting
    assert {k: v for k, v in lean.items() if k != "window"} == {
        k: v for k, v in full.items() if k != "window"
    }
    handle.close()
