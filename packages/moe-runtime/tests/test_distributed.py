"""A model split across 2, 3 and 4 "hosts" (network namespaces, MLX's ring backend over TCP):
rank 0's tokens and logits equal the unmodified mlx-lm model's in one process, at a capacity
below the number of experts, for mlx-lm's own pipeline split (qwen3_moe, qwen3_next) and for the
families moe adapts (mixtral, qwen2_moe, olmoe, gpt_oss); each rank holds and reads only its own
layers' experts, and every rank makes the same prompt-cache choices and samples the same tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from moe_runtime import plan_split

RANK = Path(__file__).parent / "_rank.py"
CAPACITY = 6  # of 8-16 experts, top-2 to top-4
MAX_TOKENS = 8
LAUNCH_TIMEOUT = 300

CASES = {
    # ranks: (split, families)
    2: ("even", ["qwen3_moe", "qwen3_next", "mixtral", "qwen2_moe", "olmoe"]),
    3: ("2,1,1", ["qwen3_moe", "qwen3_next", "mixtral"]),
    4: ("even", ["qwen3_moe", "qwen3_next", "gpt_oss"]),  # one layer per rank
}


def reference(path: Path, prompts: list[list[int]]) -> list[list[dict]]:
    model, tokenizer = mlx_lm.load(str(path))
    return [
        [
            {"token": r.token, "logprobs": r.logprobs.astype(mx.float32)}
            for r in mlx_lm.stream_generate(model, tokenizer, mx.array(prompt), MAX_TOKENS)
        ]
        for prompt in prompts
    ]


@pytest.mark.parametrize("ranks", sorted(CASES))
def test_split_model_is_exact(ranks, moe_hosts, moe_checkpoint, tmp_path):
    split, families = CASES[ranks]
    paths = [moe_checkpoint(f, num_layers=4) for f in families]
    hosts = moe_hosts(ranks)
    out = tmp_path / "out"
    out.mkdir()
    argv = [sys.executable, str(RANK), str(out), str(tmp_path / "cache"), str(CAPACITY), split]
    launch = hosts.launch([*argv, *map(str, paths)], timeout=LAUNCH_TIMEOUT)
    assert launch.wait() == 0, launch.output()
    assert "exited with code" not in launch.output(), launch.output()
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]
    layers = [1] * ranks if split == "even" else [int(s) for s in split.split(",")]
    if split == "even":
        layers = [4 // ranks + (1 if r < 4 % ranks else 0) for r in range(ranks)]
    for path in map(str, paths):
        want = reference(Path(path), seen[0][path]["prompts"])
        for rank, result in enumerate(r[path] for r in seen):
            assert result["prompts"] == seen[0][path]["prompts"]
            # Every rank sampled the same tokens as rank 0 and computed the same logits.
            assert result["sampled"] == seen[0][path]["sampled"], (path, rank)
            for got_run, want_run in zip(result["runs"], want, strict=True):
                assert [g["token"] for g in got_run] == [w["token"] for w in want_run], (path, rank)
                for g, w in zip(got_run, want_run, strict=True):
                    assert np.array_equal(
                        np.array(g["logprobs"], np.float32), np.array(w["logprobs"])
                    )
            # Rank r runs the layers after those of ranks r+1...: only their banks are offloaded.
            start = sum(layers[rank + 1 :])
            stage = list(range(start, start + layers[rank]))
            assert result["stage"]["layers"] == [stage[0], stage[-1] + 1]
            assert [int(b.split(".")[2]) for b in result["banks"]] == stage, (path, rank)
            assert result["bytes_read"] > 0
            # Each choice of the prefix cache was the same on every rank.
            assert result["prefix_cache"] == seen[0][path]["prefix_cache"], (path, rank)


def test_plan_split_follows_memory():
    assert plan_split(48, [24e9, 24e9]) == [24, 24]
    assert plan_split(48, [16e9, 32e9]) == [16, 32]
    assert plan_split(4, [1, 100]) == [1, 3]
    assert sum(plan_split(61, [3, 5, 7])) == 61
    with pytest.raises(ValueError, match="cannot split"):
        plan_split(2, [1, 1, 1])
