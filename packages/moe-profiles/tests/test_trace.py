import numpy as np
import pytest

from moe_profiles import Segment, Trace, TraceError, TraceRecorder, synthetic_trace


def test_synthetic_trace_round_trips(tmp_path):
    trace = synthetic_trace(4, 32, 4, 200, 1.0, 3, 5, prefill=16)
    path = trace.save(tmp_path / "t.npz")
    loaded = Trace.load(path)
    assert loaded == trace
    assert loaded.segments == trace.segments and len(loaded.segments) == 5
    assert loaded.layers[0].steps[0].shape == (16, 4)
    assert [s.shape for s in loaded.layers[2].steps] == [s.shape for s in trace.layers[2].steps]


def test_recorder_keeps_steps_and_segments(tmp_path):
    rec = TraceRecorder([8, 8], top_k=2, fingerprint="abc")
    rec.segment("first")
    rec.on_step(0, np.array([[0, 1], [2, 3]]))
    rec.on_step(1, np.array([[4, 5], [6, 7]]))
    rec.segment("second")
    rec.on_step(0, np.array([[1, 2]]))
    rec.on_step(1, np.array([[7, 0]]))
    trace = rec.trace()
    assert trace.fingerprint == "abc" and trace.num_steps == 2 and trace.num_tokens == 3
    assert trace.segments == (Segment("first", (0, 0)), Segment("second", (1, 1)))
    assert np.array_equal(trace.layers[1].steps[1], [[7, 0]])
    assert Trace.load(trace.save(tmp_path / "r.npz")) == trace
    assert trace.counts()[0].tolist() == [1, 2, 2, 1, 0, 0, 0, 0]


def test_trace_equality_sees_a_changed_id(tmp_path):
    trace = synthetic_trace(2, 16, 2, 50, 1.0, 0, 2)
    other = Trace.load(trace.save(tmp_path / "t.npz"))
    other.layers[1].ids[7, 0] = (other.layers[1].ids[7, 0] + 1) % 16
    assert other != trace


def test_corrupt_and_missing_trace_files_are_clear(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(TraceError, match=r"bad\.npz: corrupt trace"):
        Trace.load(bad)
    with pytest.raises(TraceError, match="no such trace"):
        Trace.load(tmp_path / "absent.npz")
    path = synthetic_trace(2, 16, 2, 50, 1.0, 0, 2).save(tmp_path / "t.npz")
    data = dict(np.load(path))
    np.savez(tmp_path / "cut.npz", **{k: v for k, v in data.items() if k != "ids_1"})
    with pytest.raises(TraceError, match=r"cut\.npz"):
        Trace.load(tmp_path / "cut.npz")


def test_out_of_range_ids_are_refused():
    with pytest.raises(TraceError, match=r"outside 0\.\.3"):
        Trace.from_steps([[np.array([[1, 4]])]], [4])


def test_recorder_keeps_predictions_for_the_next_step_of_a_layer(tmp_path):
    rec = TraceRecorder([8, 8], top_k=2)
    rec.on_step(0, np.array([[0, 1]]))
    rec.predicted(1, np.array([5, 3, 5]))
    rec.on_step(1, np.array([[3, 4]]))
    rec.on_step(0, np.array([[2, 3]]))
    rec.on_step(1, np.array([[6, 7]]))  # no prediction for this one
    trace = rec.trace()
    assert trace.layers[0].predicted is None
    assert trace.layers[1].predicted.tolist() == [[3, 5], [-1, -1]]
    loaded = Trace.load(trace.save(tmp_path / "p.npz"))
    assert loaded == trace and loaded.layers[1].predicted.tolist() == [[3, 5], [-1, -1]]
    with pytest.raises(TraceError, match="recorder has 2"):
        rec.predicted(2, np.array([1]))


def test_chronological_split_cuts_at_a_prompt_start():
    trace = synthetic_trace(2, 16, 2, 100, 1.0, 0, 5, prefill=4)  # prompts start every 20 steps
    fit, held = trace.split(0.33)
    assert fit.num_steps == 60 and held.num_steps == 40  # the prompt start nearest to 67
    assert [s.starts for s in held.segments] == [(0, 0), (20, 20)]
    assert np.array_equal(held.layers[1].steps[0], trace.layers[1].steps[60])
    assert held.layers[1].steps[0].shape == (4, 2)  # a prompt's prefill opens the held-out part
    with pytest.raises(ValueError, match="held-out share"):
        trace.split(1.0)
