"""`verify`: a checkpoint in the Hugging Face cache layout is checked against the hashes its blobs
are named by, its headers against its files, and its pack against the records' checksums."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from mlx_lm.utils import load_model

import moe_core
from moe_runtime import verify

SHARD = "model-00001-of-00002.safetensors"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
    """The checkpoint as `hf download` leaves it: blobs named by hash, a snapshot of symlinks."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    for file in sorted(checkpoint().iterdir()):
        data = file.read_bytes()
        name = hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors" else git_sha1(data)
        (repo / "blobs" / name).write_bytes(data)
        os.symlink(f"../../blobs/{name}", snapshot / file.name)
    from huggingface_hub import constants

    # huggingface-hub reads its environment once, at import: set what it read.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return snapshot


def by_name(checks):
    return {c.file.name: c for c in checks}


def test_a_good_download_verifies_by_its_hub_name(hub):
    progress = []
    checks = by_name(
        verify("org/tiny", progress=lambda done, total: progress.append((done, total)))
    )
    assert {c.status for c in checks.values()} == {"ok"}, checks
    assert checks[SHARD].detail.startswith("sha256")
    assert checks["config.json"].detail.startswith("sha1")
    assert progress and progress[-1][0] == progress[-1][1]


def test_random_bytes_behind_a_valid_header_are_found(hub):
    shard = hub / SHARD
    blob = shard.resolve()
    size = blob.stat().st_size
    with open(blob, "r+b") as f:  # keep the header, replace the tensor data's tail
        f.seek(size - 4096)
        f.write(os.urandom(4096))
    checks = by_name(verify(hub))
    assert checks[SHARD].status == "bad"
    assert "recorded" in checks[SHARD].detail
    assert checks["config.json"].status == "ok"


def test_a_truncated_shard_is_named_even_without_hashes(checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint(), model)
    with open(model / SHARD, "r+b") as f:
        f.truncate(f.seek(0, 2) - 1000)
    checks = by_name(verify(model))
    assert checks[SHARD].status == "bad"
    assert "truncated" in checks[SHARD].detail
    assert checks["config.json"].status == "unchecked"


def test_the_pack_is_checked_record_by_record(checkpoint, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(checkpoint(), model)
    out = moe_core.pack(load_model(model, lazy=True)[0], model)
    assert by_name(verify(model))[out.name].status == "ok"
    with open(out, "r+b") as f:
        f.seek(out.stat().st_size - 3000)  # inside the last record
        f.write(b"\xff" * 16)
    check = by_name(verify(model))[out.name]
    assert check.status == "bad" and "fails its checksum" in check.detail


def test_local_dir_downloads_are_checked_by_their_metadata(checkpoint, tmp_path):
    """`hf download --local-dir` keeps each file's etag (its hash) under .cache/huggingface."""
    model = tmp_path / "model"
    shutil.copytree(checkpoint(), model)
    meta = model / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    data = (model / SHARD).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (meta / f"{SHARD}.metadata").write_text(f"{'b' * 40}\n{sha}\n1700000000.0\n")
    checks = by_name(verify(model))
    assert checks[SHARD].status == "ok"
    (meta / f"{SHARD}.metadata").write_text(f"{'b' * 40}\n{'0' * 64}\n1700000000.0\n")
    assert by_name(verify(model))[SHARD].status == "bad"
