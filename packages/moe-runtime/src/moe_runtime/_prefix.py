"""The prompt cache kept across requests, and the tokens it holds.

A new prompt that extends what the cache holds only prefills its new tokens. Attention caches are
trimmed back to the common prefix. Caches that cannot be trimmed (Qwen3-Next's linear-attention
`ArraysCache`, a `RotatingKVCache` past its window) are resumed only from a state that holds
exactly a prefix of the new prompt: the live cache, or a snapshot taken at the last message
boundary of a prompt (else at the end of its prefill). Anything else is recomputed from scratch,
never run over stale state.

Snapshots live in a `SnapshotStore` (`_snapshots.py`): several conversations in memory within a
byte budget, and on disk for the next start. The live cache's state goes there before it is
replaced or mostly trimmed away, so a conversation interleaved with another keeps its prefix.

On a model split across ranks every rank holds the cache of its own layers, and all must feed
the same tokens: `agree` makes each choice (trim or not, snapshot or not) the same everywhere,
and the store there keeps one snapshot by count, not bytes, and nothing on disk.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

from ._snapshots import SnapshotStore, _common_prefix


class PromptCache:
    """Owns the model's cache; `tokens` is always exactly what `cache` has seen."""

    def __init__(
        self,
        model: nn.Module,
        *,
        enabled: bool,
        prefill_step_size: int = 2048,
        agree: Callable[[bool], bool] = bool,
        store: SnapshotStore | None = None,
    ) -> None:
        self.model = model
        self.agree = agree  # True where every rank says True (a collective on a split model)
        self.enabled = enabled
        self.prefill_step_size = prefill_step_size
        # Without a store of its own (a split model): the last prompt's snapshot and no other.
        self.store = store or SnapshotStore(memory_bytes=None, max_entries=1)
        self.keep_replaced = store is not None
        self.trimmable = can_trim_prompt_cache(make_prompt_cache(model))  # this rank's layers
        self.cache: list | None = None
        self.tokens: list[int] = []
        self._taken: list[tuple[int, ...]] = []  # prompts' snapshots, written at the next commit
        self.counts = {"trimmed": 0, "restored": 0, "loaded": 0, "recomputed": 0}

    def prepare(self, prompt: list[int]) -> int:
        """Make the cache hold a prefix of `prompt` (never all of it: mlx-lm needs one token to
        feed); return how many tokens it holds."""
        return self._prepare(prompt) if self.enabled else self.reset()

    def _prepare(self, prompt: list[int]) -> int:
        # The last prompt token is always fed again, so reuse stops one short of the prompt.
        limit = len(prompt) - 1
        live, trim = 0, False
        if self.cache is not None:
            common = min(_common_prefix(self.tokens, prompt), limit)
            if common == len(self.tokens):
                live = common
            elif self.agree(can_trim_prompt_cache(self.cache)):
                live, trim = common, True
        found = self.store.best(prompt, limit)
        if self.agree(found is not None and found.usable > live):
            assert found is not None
            cache = self.store.take(found)
            if self.agree(cache is not None):
                self._retire()
                self.cache, self.tokens = cache, list(prompt[: found.usable])
                self.counts["restored" if found.tier == "memory" else "loaded"] += 1
                return found.usable
        if self.cache is None:
            return self.reset()
        if not trim:
            if live == len(self.tokens):
                return live
        else:
            if self.keep_replaced and 2 * live < len(self.tokens):  # most goes: keep it
                self.store.put(self.tokens, self.cache, trimmable=True, owned=False)
            excess = len(self.tokens) - live
            if self.agree(trim_prompt_cache(self.cache, excess) == excess):
                del self.tokens[live:]
                self.counts["trimmed"] += 1
                return live
        self._retire()
        self.counts["recomputed"] += 1
        return self.reset()

    def prefill(
        self,
        prompt: list[int],
        quantize: Callable[[list], None],
        cancelled: Callable[[], bool] | None = None,
        *,
        boundary: int | None = None,
    ) -> bool:
        """Feed `prompt` up to its last token, in chunks as mlx-lm's `generate_step` does.

        A cache that cannot be trimmed is snapshotted after `boundary` tokens (the end of the
        prompt's last message), or at the end when there is none. `cancelled` is asked before
        each chunk; when it says so, stop and return False. The cache then holds the chunks fed
        so far, a prefix of `prompt` the next request reuses."""
        cache = self._live()
        end = len(prompt) - 1
        snapshot = None
        if self.enabled and not self.agree(can_trim_prompt_cache(cache)):
            snapshot = end
            if boundary is not None and len(self.tokens) < boundary < end:
                snapshot = boundary
        for stop in sorted(s for s in {snapshot, end} if s is not None):
            if not self._feed(prompt[len(self.tokens) : stop], quantize, cancelled):
                return False
            if stop == snapshot and self.tokens and tuple(self.tokens) not in self.store.memory:
                self.store.put(self.tokens, cache, trimmable=False, owned=False)
                self._taken.append(tuple(self.tokens))
        return True

    def _feed(self, rest: list[int], quantize, cancelled) -> bool:
        cache = self._live()
        step = self.prefill_step_size
        with mx.stream(generation_stream):
            for start in range(0, len(rest), step):
                if cancelled is not None and cancelled():
                    return False
                chunk = rest[start : start + step]
                self.model(mx.array(chunk)[None], cache=cache)
                quantize(cache)
                mx.eval([c.state for c in cache])
                self.tokens.extend(chunk)
                mx.clear_cache()
        return True

    def commit(self, tokens: list[int]) -> None:
        """The cache has now also seen the generated tokens: `tokens` is everything it holds.
        With a disk tier, that state (and this prompt's snapshot) is written for the next start."""
        if not self.enabled:
            self.reset()
            return
        self.tokens = tokens
        if self.store.disk is None:
            return
        for key in self._taken:  # those still in memory
            taken = self.store.memory.get(key)
            if taken is not None and taken.cache is not None:  # in memory, so it holds its cache
                self.store.persist(taken.tokens, taken.cache, trimmable=False)
        self._taken = []
        cache = self._live()
        self.store.persist(self.tokens, cache, trimmable=can_trim_prompt_cache(cache))

    def detach(self) -> list:
        """Hand the cache (holding `tokens`) to a batch that decodes into it; the next prompt
        starts from scratch, or from what `adopt` gives back."""
        cache, self.cache, self.tokens = self._live(), None, []
        return cache

    def _live(self) -> list:
        """The cache the next tokens go into (`prepare` made or kept one)."""
        assert self.cache is not None, "the prompt cache was not prepared"
        return self.cache

    def adopt(self, cache: list, tokens: list[int]) -> None:
        """A batch is done with a request's cache, which holds `tokens`: it becomes the cache
        the next prompt is compared with; the one it replaces goes to the snapshots."""
        self._retire()
        self.cache = cache
        self.commit(tokens)

    def reset(self) -> int:
        self.cache = make_prompt_cache(self.model)
        self.tokens = []
        return 0

    def _retire(self) -> None:
        """The live cache is about to be replaced: its state goes to the store, for its
        conversation's next turn."""
        if self.keep_replaced and self.cache is not None and self.tokens:
            trimmable = self.agree(can_trim_prompt_cache(self.cache))
            self.store.put(self.tokens, self.cache, trimmable=trimmable, owned=True)
        self.cache, self.tokens = None, []

    def clear(self) -> None:
        self.cache, self.tokens, self._taken = None, [], []
        self.store.memory.clear()
