"""`atomic_write`: the new content or the old, never a half-written file or a stray temporary."""

import pytest

import moe_core


def test_the_content_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "state.json"
    with moe_core.atomic_write(path, "w") as f:
        f.write("new")
        assert not path.exists()  # nothing at the path until the block ends
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), moe_core.atomic_write(path) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_pack_leaves_nothing(moe_checkpoint, tmp_path):
    from mlx_lm.utils import load_model

    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    out = tmp_path / "experts.moepack"

    def fail(done, total):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        moe_core.pack(load_model(path, lazy=True)[0], path, out, progress=fail)
    assert list(tmp_path.iterdir()) == []
