"""A tiny offloadable qwen3_moe checkpoint from moe-testing, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(moe_checkpoint) -> Path:
    return moe_checkpoint("qwen3_moe", num_layers=3, num_experts=16, top_k=4)
