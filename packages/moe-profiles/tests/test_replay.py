"""The simulator replays the same logic as a real offloaded model."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

import moe_core
from moe_profiles import Trace, TraceRecorder, simulate


@pytest.mark.parametrize(("capacity", "policy"), [(5, "lfuda"), (8, "lru"), (3, "fifo")])
def test_simulate_matches_offloaded_model(tiny_checkpoint, tmp_path, capacity, policy):
    model, _ = load_model(tiny_checkpoint, lazy=True)
    handle = moe_core.offload(
        model, tiny_checkpoint, capacity=capacity, policy=policy, lookahead=False
    )
    mx.eval(model.parameters())
    recorder = TraceRecorder.attach(handle, fingerprint=moe_core.fingerprint(tiny_checkpoint))
    rng = np.random.default_rng(capacity)
    for prompt in range(2):
        recorder.segment(f"prompt-{prompt}")
        cache = make_prompt_cache(model)
        tokens = mx.array(rng.integers(0, 256, size=(1, 12)))
        logits = model(tokens, cache=cache)
        for _ in range(10):
            token = mx.argmax(logits[:, -1:], axis=-1)
            logits = model(token, cache=cache)
        mx.eval(logits)
    stats = handle.stats()
    trace = Trace.load(recorder.trace().save(tmp_path / "trace.npz"))
    assert trace.num_steps == 22 and trace.layers[0].steps[0].shape == (12, 4)
    result = simulate(trace, capacity, policy)
    assert stats["misses"] > 0 and stats["hits"] > 0
    assert (result.hits, result.misses) == (stats["hits"], stats["misses"])
    for ours, real in zip(result.per_layer, stats["layers"], strict=True):
        assert (ours.hits, ours.misses) == (real["hits"], real["misses"])
    handle.close()
