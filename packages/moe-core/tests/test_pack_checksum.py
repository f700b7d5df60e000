"""The packed layout's CRC-32C per record: a damaged record is refused the first time it is read,
naming the file and the expert, and `verify_pack` finds every damaged record."""

import json
import shutil
import struct

import pytest
from _models import greedy, prompt, vocab_size
from mlx_lm.utils import load_model

import moe_core
from moe_core import CheckpointError


@pytest.fixture
def packed(moe_checkpoint, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(moe_checkpoint("qwen3_moe", "stacked", "q4"), model_dir)
    model, _ = load_model(model_dir, lazy=True)
    return model_dir, moe_core.pack(model, model_dir)


def layout(path):
    with open(path, "rb") as f:
        f.seek(8)
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def damage(path, bank: int, expert: int, at: int = 100) -> None:
    """Flip one byte inside expert `expert`'s record of bank `bank` (not in its padding)."""
    entry = layout(path)["banks"][bank]
    offset = entry["offset"] + expert * entry["record_bytes"] + at
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_every_record_has_a_checksum_and_a_good_pack_verifies(packed):
    model_dir, out = packed
    doc = layout(out)
    assert doc["version"] == 2
    for entry in doc["banks"]:
        assert len(entry["checksums"]) == entry["num_experts"]
        assert len(set(entry["checksums"])) > 1
    read = []
    assert moe_core.verify_pack(out, moe_core.fingerprint(model_dir), progress=read.append) == []
    assert sum(read) == sum(e["num_experts"] * e["record_bytes"] for e in doc["banks"])


def test_verify_pack_names_each_damaged_record(packed):
    _, out = packed
    damage(out, 0, 3)
    damage(out, 1, 0, at=7)
    bad = moe_core.verify_pack(out)
    assert len(bad) == 2
    paths = [entry["path"] for entry in layout(out)["banks"]]
    assert f"expert 3 of {paths[0]}" in bad[0] and f"expert 0 of {paths[1]}" in bad[1]
    assert all(line.startswith(str(out)) for line in bad)


def test_a_damaged_record_is_refused_when_first_read(packed):
    model_dir, out = packed
    damage(out, 0, 5)
    model, _ = load_model(model_dir, lazy=True)
    handle = moe_core.offload(model, model_dir, capacity=16)
    assert handle.stats()["packed"]
    with pytest.raises(CheckpointError, match=rf"{out}: expert 5 of .* fails its checksum"):
        handle.prefetch({0: range(16)})
    handle.close()


def test_generation_over_a_damaged_pack_fails_instead_of_answering(packed):
    model_dir, out = packed
    for expert in range(layout(out)["banks"][0]["num_experts"]):
        damage(out, 0, expert)
    model, _ = load_model(model_dir, lazy=True)
    handle = moe_core.offload(model, model_dir, capacity=4)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        greedy(model, prompt(vocab_size(model), 8), 2)
    handle.close()


def test_a_record_is_summed_on_its_first_read_only(packed):
    """The check costs one CRC-32C per record per store: a record read again is not summed."""
    import numpy as np

    from moe_core._pack import open_pack
    from moe_core._store import ExpertStore

    model_dir, out = packed
    geometry = moe_core.describe(load_model(model_dir, lazy=True)[0], model_dir)
    maps = open_pack(out, list(geometry.banks), geometry.fingerprint)
    bank = maps[0]
    dests = [np.zeros((1, p.nbytes), dtype=np.uint8) for p in bank.params]
    first = ExpertStore(maps, threads=1)
    first.read(bank, [(2, 0)], dests)
    damage(out, 0, 2)
    first.read(bank, [(2, 0)], dests)  # checked once already: not summed again
    first.close()
    fresh = ExpertStore(maps, threads=1)
    with pytest.raises(CheckpointError, match=r"expert 2 of .* fails its checksum"):
        fresh.read(bank, [(2, 0)], dests)
    fresh.close()


def test_a_version_1_pack_is_refused_with_what_to_do(packed):
    model_dir, out = packed
    data = bytearray(out.read_bytes())
    (length,) = struct.unpack("<Q", data[8:16])
    header = json.loads(data[16 : 16 + length])
    header["version"] = 1
    new = json.dumps(header).encode().ljust(length)
    data[16 : 16 + length] = new
    out.write_bytes(bytes(data))
    model, _ = load_model(model_dir, lazy=True)
    with pytest.raises(CheckpointError, match="run `moe pack` again"):
        moe_core.offload(model, model_dir, capacity=4, packed=out)
