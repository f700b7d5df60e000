"""The server tests' model: a tiny qwen3_moe checkpoint from moe-testing (ChatML template with
tool calls between <tool_call> tags, so mlx-lm picks its json_tools parser), 2 layers of 8
experts, top-2."""

from __future__ import annotations

NUM_EXPERTS = 8
TOP_K = 2
NUM_LAYERS = 2
CAPACITY = 4  # expert slots per layer the server tests' session keeps: half of them
CONTEXT = 1500  # the session's max_context: prompt and answer together
