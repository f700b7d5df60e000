"""One rank of a multi-host test (run by mlx.launch in a network namespace): every rank opens a
`Session` on its stage of each checkpoint and makes the same calls; each writes what it saw.

    python _rank.py OUT_DIR CACHE_DIR CAPACITY SPLIT CHECKPOINT...   (SPLIT: "even" or "3,1")
"""

import json
import sys
from pathlib import Path

import mlx.core as mx

from moe_runtime import Session
from moe_runtime._pipeline import barrier

MESSAGES = [{"role": "user", "content": "hello how are you"}]
MAX_TOKENS = 8


def main() -> None:
    out, cache, capacity, split, *paths = sys.argv[1:]
    group = mx.distributed.init(strict=True)
    split = None if split == "even" else [int(s) for s in split.split(",")]
    result = {}
    for path in paths:
        with Session(path, capacity=int(capacity), group=group, split=split, cache_dir=cache) as s:
            chat = s.encode_prompt(MESSAGES)
            runs = [[_record(r) for r in s.stream(chat, max_tokens=MAX_TOKENS)]]
            # The next turn extends the cache (trimmed, restored or recomputed alike everywhere),
            # then a prompt that shares nothing with it.
            prompts = [chat, chat + [r["token"] for r in runs[0]] + [40, 41, 42], [1, 40, 41, 42]]
            for prompt in prompts[1:]:
                runs.append([_record(r) for r in s.stream(prompt, max_tokens=MAX_TOKENS)])
            # Sampled: the ranks draw the same token only if their random states agree.
            sampled = [r.token for r in s.stream(chat, max_tokens=6, temperature=1.0)]
            stats = s.stats()
            result[path] = {
                "prompts": prompts,
                "runs": runs,
                "sampled": sampled,
                "stage": stats["pipeline"],
                "banks": [layer["path"] for layer in stats["layers"]],
                "bytes_read": stats["bytes_read"],
                "prefix_cache": stats["session"]["prefix_cache"],
            }
    Path(out, f"rank{group.rank()}.json").write_text(json.dumps(result))
    barrier(group)  # no rank exits while another still needs it


def _record(r) -> dict:
    return {"token": r.token, "logprobs": r.logprobs.astype(mx.float32).tolist()}


if __name__ == "__main__":
    main()
