"""The prompt cache kept across requests, and the tokens it holds.

A new prompt that extends what the cache holds only prefills its new tokens. Attention caches are
trimmed back to the common prefix. Caches that cannot be trimmed (Qwen3-Next's linear-attention
`ArraysCache`, a `RotatingKVCache` past its window) are resumed only from a state that holds
exactly a prefix of the new prompt: the live cache, or a copy taken at the end of the last
prompt's prefill. Anything else is recomputed from scratch, never run over stale state.

On a model split across ranks every rank holds the cache of its own layers, and all must feed
the same tokens: `agree` makes each choice (trim or not, snapshot or not) the same everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache


@dataclass(slots=True)
class Snapshot:
    tokens: list[int]
    cache: list


class PromptCache:
    """Owns the model's cache; `tokens` is always exactly what `cache` has seen."""

    def __init__(
        self,
        model: nn.Module,
        *,
        enabled: bool,
        prefill_step_size: int = 2048,
        agree: Callable[[bool], bool] = bool,
    ) -> None:
        self.model = model
        self.agree = agree  # True where every rank says True (a collective on a split model)
        self.enabled = enabled
        self.prefill_step_size = prefill_step_size
        self.cache: list | None = None
        self.tokens: list[int] = []
        self.snapshot: Snapshot | None = None
        self.counts = {"trimmed": 0, "restored": 0, "recomputed": 0}

    def prepare(self, prompt: list[int]) -> int:
        """Make the cache hold a prefix of `prompt` (never all of it: mlx-lm needs one token to
        feed); return how many tokens it holds."""
        if not self.enabled or self.cache is None:
            return self.reset()
        # The last prompt token is always fed again, so reuse stops one short of the prompt.
        limit = min(_common_prefix(self.tokens, prompt), len(prompt) - 1)
        if limit == len(self.tokens):
            return limit
        if self.agree(can_trim_prompt_cache(self.cache)):
            excess = len(self.tokens) - limit
            if self.agree(trim_prompt_cache(self.cache, excess) == excess):
                del self.tokens[limit:]
                self.counts["trimmed"] += 1
                return limit
        snapshot = self.snapshot
        if (
            snapshot is not None
            and len(snapshot.tokens) <= limit
            and prompt[: len(snapshot.tokens)] == snapshot.tokens
        ):
            self.cache = _copy(snapshot.cache)
            self.tokens = list(snapshot.tokens)
            self.counts["restored"] += 1
            return len(self.tokens)
        self.counts["recomputed"] += 1
        return self.reset()

    def prefill(
        self,
        prompt: list[int],
        quantize: Callable[[list], None],
        cancelled: Callable[[], bool] | None = None,
    ) -> bool:
        """Feed `prompt` up to its last token, in chunks as mlx-lm's `generate_step` does.

        `cancelled` is asked before each chunk; when it says so, stop and return False. The
        cache then holds the chunks fed so far, a prefix of `prompt` the next request reuses."""
        rest = prompt[len(self.tokens) : -1]
        step = self.prefill_step_size
        with mx.stream(generation_stream):
            for start in range(0, len(rest), step):
                if cancelled is not None and cancelled():
                    return False
                chunk = rest[start : start + step]
                self.model(mx.array(chunk)[None], cache=self.cache)
                quantize(self.cache)
                mx.eval([c.state for c in self.cache])
                self.tokens.extend(chunk)
                mx.clear_cache()
        fresh = self.snapshot is None or self.snapshot.tokens != self.tokens
        if self.enabled and fresh and not self.agree(can_trim_prompt_cache(self.cache)):
            self.snapshot = Snapshot(list(self.tokens), _copy(self.cache))
        return True

    def commit(self, tokens: list[int]) -> None:
        """The cache has now also seen the generated tokens: `tokens` is everything it holds."""
        if self.enabled:
            self.tokens = tokens
        else:
            self.reset()

    def detach(self) -> list:
        """Hand the cache (holding `tokens`) to a batch that decodes into it; the next prompt
        starts from scratch, or from what `adopt` gives back."""
        cache, self.cache, self.tokens = self.cache, None, []
        return cache

    def adopt(self, cache: list, tokens: list[int]) -> None:
        """A batch is done with a request's cache, which holds `tokens`: it becomes the cache
        the next prompt is compared with."""
        self.cache = cache
        self.commit(tokens)

    def reset(self) -> int:
        self.cache = make_prompt_cache(self.model)
        self.tokens = []
        return 0

    def clear(self) -> None:
        self.cache, self.tokens, self.snapshot = None, [], None


def _copy(cache: list) -> list:
    """A copy whose arrays are new: mlx-lm's caches write into their arrays in place."""
    copied = copy.deepcopy(cache)
    mx.eval([c.state for c in copied])
    return copied


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
