"""moe-testing: small synthetic MoE checkpoints in the real on-disk formats, built from
mlx-lm's own model classes with seeded random weights, and a pytest plugin that serves them.

    spec = CheckpointSpec(family="qwen3_moe", layout="stacked", precision="q4")
    path = build_checkpoint(spec, tmp_dir)
    model, tokenizer = reference_model(path)  # the unmodified mlx_lm.load(str(path))
    top_share(routing_counts(model))  # share of routings the busiest 20% of experts take

    # Tens of GB for benchmarks: real non-expert weights, random expert bytes.
    big = build_bulk_checkpoint(BulkSpec(QWEN3_CODER_NEXT, skew=0.65), tmp_dir / "big")
"""

from moe_testing._build import build_checkpoint, reference_model
from moe_testing._bulk import QWEN3_CODER_NEXT, BulkSpec, build_bulk_checkpoint
from moe_testing._routing import routing_counts, top_share
from moe_testing._spec import FAMILIES, LAYOUTS, PRECISIONS, CheckpointSpec

__all__ = [
    "FAMILIES",
    "LAYOUTS",
    "PRECISIONS",
    "QWEN3_CODER_NEXT",
    "BulkSpec",
    "CheckpointSpec",
    "build_bulk_checkpoint",
    "build_checkpoint",
    "reference_model",
    "routing_counts",
    "top_share",
]
