"""Record the demo model's routing on the shipped prompt presets, for `policies_heldout.py`.

    uv run python benchmarks/record_traces.py                 # every set below
    uv run python benchmarks/record_traces.py --sets chat     # one of them

Writes `benchmarks/results/traces/demo-<set>.npz` (moe-profiles traces). Each prompt is run
through the chat template (with its tools, for the tool-use set) and sampled at temperature 0.7
with a seed per prompt, so a rerun on the same model and MLX version gives the same trace; rerun
it after the demo model changes. At every decoded token the trace also holds what the lookahead
predicts for each layer (that layer's router applied to the previous MoE layer's input, as
moe-core's lookahead does), so policies that use the prediction can be replayed. `dev` is a set of prompts that no evaluation uses: policies and
their parameters are chosen on it (and on synthetic traces of other seeds), never on the others.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

TRACES = Path(__file__).parent / "results" / "traces"
SETS = ("dev", "coding", "chat", "tools")
TOKENS = 96

# Prompts for fitting only: none of them is in a shipped preset.
DEV_PROMPTS = [
    "Write a Python generator that yields the Fibonacci numbers below a limit.",
    "How do I read a CSV file with the standard library and sum one column?",
    "Explain list comprehensions with two short examples.",
    "What is a context manager? Show one written with contextlib.",
    "Write a function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Give me a short poem about autumn leaves.",
    "What should I pack for a weekend of hiking in the mountains?",
    "Write a class for a bank account with deposit, withdraw and a balance that cannot go negative.",
    "How does binary search work? Write it in Python.",
    "Explain the difference between a list and a tuple.",
    "Write a command line tool with argparse that counts the words of a file.",
    "Suggest a name for a bakery that sells sourdough bread.",
]


def requests(name: str) -> list[tuple[object, list | None]]:
    from moe_profiles import load_preset_requests

    if name == "dev":
        return [([{"role": "user", "content": p}], None) for p in DEV_PROMPTS]
    out = []
    for p in load_preset_requests(name):
        prompt = [{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else p.prompt
        out.append((prompt, p.tools))
    return out


def record(
    name: str, *, tokens: int = TOKENS, model: str | None = None, out: Path = TRACES
) -> Path:
    import moe_core
    from moe_profiles import TraceRecorder
    from moe_runtime import Session, demo_model_path

    path = Path(model) if model else demo_model_path()
    # All experts resident: routing does not depend on capacity in exact mode, and this is fastest.
    with Session(path, capacity=10**6, prefix_cache=False, warm_start=False) as session:
        recorder = TraceRecorder.attach(session.handle, fingerprint=moe_core.fingerprint(path))
        watch_predictions(session, recorder)
        for i, (prompt, tools) in enumerate(requests(name)):
            recorder.segment(f"{name}[{i}]")
            session.generate(prompt, max_tokens=tokens, tools=tools, temperature=0.7, seed=i)
        session.handle.unobserve(recorder)
    return recorder.trace().save(out / f"demo-{name}.npz")


def watch_predictions(session, recorder) -> None:
    """Wrap each MoE block's router so that, on a decoded token, its input also goes through the
    next MoE block's router: the lookahead's prediction for that block, recorded for its step."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    class Predicting(nn.Module):
        def __init__(self, router, following, top_k: int, layer: int) -> None:
            super().__init__()
            self.router, self.following, self.top_k, self.layer = router, following, top_k, layer

        def __call__(self, x):
            if x.size == x.shape[-1]:  # one token
                scores = self.following(x)
                picks = mx.argpartition(scores, kth=-self.top_k, axis=-1)[..., -self.top_k :]
                recorder.predicted(self.layer + 1, np.array(picks).reshape(-1))
            return self.router(x)

    blocks = []
    for entry in session.handle.stats()["layers"]:
        node = session.model
        for step in entry["path"].split(".")[:-1]:
            node = node[int(step)] if isinstance(node, list) else getattr(node, step)
        blocks.append(node)
    for index, (block, following) in enumerate(itertools.pairwise(blocks)):
        block.gate = Predicting(block.gate, following.gate, int(following.top_k), index)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS)
    )
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens generated per prompt")
    parser.add_argument("--model", help="model directory (default: the shipped demo model)")
    parser.add_argument("--out", type=Path, default=TRACES, help="where to write the traces")
    args = parser.parse_args()
    for name in args.sets.split(","):
        if name not in SETS:
            parser.error(f"unknown set {name!r}; choose from {', '.join(SETS)}")
        start = time.perf_counter()
        out = record(name, tokens=args.tokens, model=args.model, out=args.out)
        print(f"{name}: wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
