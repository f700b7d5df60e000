"""A session's start reads each checkpoint shard's header once: the geometry is described once and
handed down (plan, a profile's spread, offload, the packed-file check), never read again."""

from __future__ import annotations

from collections import Counter

import pytest

import moe_core._safetensors as safetensors
import moe_profiles
from moe_runtime import Session


@pytest.fixture
def header_reads(monkeypatch):
    """Counts reads of each shard's header from the moment it is asked for."""
    real, reads = safetensors.read_header, Counter()

    def counted(shard):
        reads[shard.name] += 1
        return real(shard)

    monkeypatch.setattr(safetensors, "read_header", counted)
    return reads


def shard_names(path) -> list[str]:
    names = sorted(p.name for p in path.glob("*.safetensors"))
    assert names
    return names


def test_a_start_reads_each_shard_header_once(checkpoint, request):
    path = checkpoint()
    reads = request.getfixturevalue("header_reads")
    with Session(path, capacity=4, warm_start=False):
        pass
    assert dict(reads) == dict.fromkeys(shard_names(path), 1)


def test_a_start_with_a_profile_reads_each_shard_header_once(checkpoint, request, tmp_path):
    path = checkpoint()
    with Session(path, capacity=16, warm_start=False) as s:
        recorder = moe_profiles.TraceRecorder.attach(s.handle, fingerprint=s.fingerprint, top_k=4)
        recorder.segment("p0")
        s.generate([{"role": "user", "content": "hello how are you today"}], max_tokens=8)
        profile = moe_profiles.Profile.from_trace(recorder.trace()).save(tmp_path / "p.json")
    reads = request.getfixturevalue("header_reads")
    with Session(path, capacity=6, profile=profile, warm_start=False):
        pass
    assert dict(reads) == dict.fromkeys(shard_names(path), 1)
