"""`moe verify`: a line per file, exit 0 when nothing is damaged, one error line and exit 1 when
a record of the pack (or a shard) is."""

from __future__ import annotations

import shutil


def test_verify_a_packed_model_then_a_damaged_one(run, checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    assert run("pack", model).exit_code == 0
    good = run("verify", model)
    assert good.exit_code == 0, good.stderr
    assert any(
        line.startswith("ok") and "experts.moepack" in line for line in good.stdout.splitlines()
    )
    assert "0 damaged" in good.stderr

    pack = model / "experts.moepack"
    with open(pack, "r+b") as f:
        f.seek(pack.stat().st_size - 3000)
        f.write(b"\x00\x01" * 8)
    bad = run("verify", model)
    assert bad.exit_code == 1
    assert any(
        line.startswith("bad") and "fails its checksum" in line for line in bad.stdout.splitlines()
    )
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and str(pack) in errors[0]


def test_verify_the_demo_model(run):
    result = run("verify", "demo")
    assert result.exit_code == 0, result.stderr
    assert "its header matches the file" in result.stdout


def test_verify_a_missing_model(run, tmp_path, one_line_error):
    one_line_error(run("verify", tmp_path / "nope"), "nope")
