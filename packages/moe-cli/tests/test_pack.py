"""`moe pack`: the packed layout is written, picked up by a session, and gives the same answer."""

from __future__ import annotations

import shutil

import moe_core


def test_pack_then_generate_reads_the_packed_file(run, checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    plain = run("generate", str(model), "hello", "--raw", "-n", "12", "--capacity", "3")
    assert plain.exit_code == 0, plain.stderr

    result = run("pack", str(model))
    assert result.exit_code == 0, result.stderr
    packed = model / moe_core.PACK_NAME
    assert packed.is_file() and "wrote" in result.stderr
    assert not list(model.glob(".*.tmp"))

    from mlx_lm.utils import load_model

    lazy, _ = load_model(model, lazy=True)
    assert moe_core.offload(lazy, model, capacity=3).stats()["packed"]

    again = run(
        "generate", str(model), "hello", "--raw", "-n", "12", "--capacity", "3", "--verbose"
    )
    assert again.exit_code == 0, again.stderr
    assert again.stdout == plain.stdout


def test_pack_of_a_missing_model_is_one_line(run, tmp_path):
    result = run("pack", str(tmp_path / "nope"))
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "error" in result.stderr
