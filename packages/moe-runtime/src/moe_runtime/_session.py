"""`Session`: a Mixture-of-Experts model loaded once, with its experts offloaded, generating
through mlx-lm's own loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import mlx.core as mx
from mlx_lm.generate import GenerationResponse, generation_stream
from mlx_lm.models.cache import make_prompt_cache

import moe_core

from ._batch import Batch
from ._kv import plan_context
from ._load import load_checked
from ._prefix import PromptCache
from ._resolve import resolve_model
from ._snapshots import DISK_DEFAULT, default_memory, open_store, parse_limit
from ._stops import StopText
from ._stream import Counters, prepare, run
from ._template import Prompt, encode_prompt
from ._warm import WarmStart

_WARMUP_TEXT = "Hello"


class Session:
    """A model loaded once for many requests: experts offloaded to a memory budget, a prompt
    cache reused across calls and turns, and the resident experts saved for the next start.

    `policy`: the expert cache's replacement policy; by default the one the profile chose on
    its trace, else the one the warm-start state's recent steps chose (the policy used before
    unless another beat it on the held-out end of those steps), else moe-core's
    `DEFAULT_POLICY`.

    Not thread-safe: one thread at a time.

    With `group` (an MLX distributed group of several ranks) the model is split across the
    ranks by layers (`split`: layers per rank, rank 0 runs the last ones): each rank loads,
    plans from its own `memory`, caches and reads only its own layers' experts. Every rank
    must then make the same calls in the same order; rank 0's output is the model's, and every
    rank samples the same tokens. End with a barrier before a rank exits (as mlx-lm does).

    Prompt caches (`prefix_cache`): besides the live one, snapshots of other conversations are
    kept in `prompt_cache_memory` bytes (default: a sixteenth of the budget, at most four full
    contexts; the plan counts
    them) and, with `prompt_cache_dir`, on disk within `prompt_cache_disk` bytes, so a
    conversation's next turn prefills only its new tokens, also after a restart.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        memory: int | str | None = None,
        host_memory: int | str | None = None,
        capacity: int | list[int] | None = None,
        profile: str | Path | None = None,
        policy: str | None = None,
        miss: str = "exact",
        kv_bits: int | None = None,
        cache_dir: str | Path | None = None,
        max_context: int | None = None,
        prefix_cache: bool = True,
        warm_start: bool = True,
        backend: moe_core.Backend | None = None,
        group: mx.distributed.Group | None = None,
        split: list[int] | None = None,
        prompt_cache_memory: int | str | None = None,
        prompt_cache_dir: str | Path | None = None,
        prompt_cache_disk: int | str = DISK_DEFAULT,
    ) -> None:
        self.model_id, self.model_path = resolve_model(model)
        self.model, tokenizer, config = load_checked(self.model_path)
        assert tokenizer is not None  # load_checked loads one unless told not to
        self.tokenizer = tokenizer
        self.stage = None
        if group is not None and group.size() > 1:  # this rank's layers only, nothing read yet
            from ._pipeline import pipeline

            if profile is not None:
                raise ValueError("a profile cannot be applied to a model split across ranks yet")
            self.stage = pipeline(self.model, group, split)
        # The checkpoint's headers are read once, here; the plan is made once and handed down.
        self.geometry = moe_core.describe(self.model, self.model_path)
        self.fingerprint = self.geometry.fingerprint
        backend = backend or moe_core.detect_backend()
        memory = moe_core.parse_size(memory) if memory is not None else None
        self.kv = plan_context(
            self.model,
            config,
            max_context=max_context,
            kv_bits=kv_bits,
            memory=memory or backend.available_memory(),
        )
        # Snapshots of other conversations: a split model keeps only its last one (every rank
        # must choose alike, and their budgets differ), within the KV reserve as before.
        snapshots = 0
        if prefix_cache and self.stage is None:
            snapshots = (
                parse_limit(prompt_cache_memory, "prompt_cache_memory")
                if prompt_cache_memory is not None
                else default_memory(memory or backend.available_memory(), self.kv.reserve_bytes)
            )
        plan = moe_core.plan_budget(
            self.geometry,
            capacity=capacity,
            memory=memory,
            reserve=self.kv.reserve_bytes + snapshots,
            backend=backend,
            # the lossy `lowbit` mode's copies come out of the same budget
            lowbit_bits=moe_core.LOWBIT_BITS if miss == "lowbit" else 0,
            host_memory=host_memory,
        )
        self.profile = None
        if profile is not None:
            from ._profile import load_profile

            self.profile = load_profile(profile, self.fingerprint)
            if not isinstance(capacity, list):  # one number of slots, a memory budget, or neither
                plan = self.profile.spread(plan)
        fingerprint = self.fingerprint
        if self.stage is not None:  # a stage keeps the state of its own layers
            fingerprint += f"-layers{self.stage.start}-{self.stage.end}"
        self._warm = WarmStart(
            fingerprint, plan, enabled=warm_start, profile=profile, cache_dir=cache_dir
        )
        if policy is None and self.profile is not None:
            policy = self.profile.policy
        elif policy is None:
            policy = self._warm.policy(plan)
        self.handle = moe_core.offload(
            self.model,
            self.geometry,
            plan,
            policy=policy or moe_core.DEFAULT_POLICY,
            miss=miss,
            backend=backend,
        )
        mx.eval(self.model.parameters())  # non-expert weights; expert slots are already there
        if self.stage is not None and group is not None:  # a stage has a group
            from ._pipeline import sync_random

            sync_random(group)
        self._start_experts()
        self.handle.reset_stats()
        agree = bool
        if self.stage is not None and group is not None:
            from ._pipeline import agreement

            agree = agreement(group)
        store = None
        if prefix_cache and self.stage is None:
            store = open_store(
                self.model,
                self.fingerprint,
                memory_bytes=snapshots,
                directory=prompt_cache_dir,
                disk_bytes=parse_limit(prompt_cache_disk, "prompt_cache_disk"),
                kv=self.kv,
                miss=miss,
            )
        self._cache = PromptCache(self.model, enabled=prefix_cache, agree=agree, store=store)
        self._active: Generator[GenerationResponse, None, None] | None = None
        self._closed = False
        self._counters = Counters()

    # -- start ------------------------------------------------------------------------------

    def _start_experts(self) -> None:
        """Before the first request: run a short prompt once (MLX's first call is slow, and it
        loads what a greeting routes to), apply the profile, then load the experts the saved
        state says are used most, all layers in one batch, so the first prefill reads less."""
        try:
            tokens = self.encode_prompt([{"role": "user", "content": _WARMUP_TEXT}])
        except ValueError:  # no chat template
            tokens = self.encode_prompt(_WARMUP_TEXT)
        mx.eval(self.model(mx.array(tokens)[None], cache=make_prompt_cache(self.model)))
        prefetched = 0
        if self.profile is not None:
            from ._profile import apply_profile

            prefetched = apply_profile(self.handle, self.profile)
        self._warm.start(self.handle, prefetched=prefetched)

    @property
    def max_context(self) -> int:
        """The one context limit: prompt and generated tokens together (`stats()["kv"]` says why)."""
        return self.kv.max_context

    # -- prompts ----------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: Prompt,
        tools: list[dict] | None = None,
        *,
        chat_template_kwargs: dict | None = None,
    ) -> list[int]:
        """Token ids of a raw text prompt, a list of chat messages, or token ids as given.

        `chat_template_kwargs` reach the chat template (e.g. `enable_thinking`)."""
        vocab = self.model.args.vocab_size if hasattr(self.model, "args") else None
        return encode_prompt(
            self.tokenizer,
            prompt,
            tools,
            vocab_size=vocab,
            chat_template_kwargs=chat_template_kwargs,
        )

    # -- generation -------------------------------------------------------------------------

    def stream(
        self,
        prompt: Prompt,
        *,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancelled: Callable[[], bool] | None = None,
        **options,
    ) -> Iterator[GenerationResponse]:
        """Yield mlx-lm `GenerationResponse`s, one per token; see the package docs.

        `options`: `max_tokens` (256; -1: up to the context limit), `tools` and
        `chat_template_kwargs` for a chat prompt, and the sampling arguments (`temperature`,
        `top_p`, `top_k`, `min_p`, the penalties, `logit_bias`, `logits_processors`: see
        `Sampling`); logits processors are called as mlx-lm calls them, with every token of the
        context so far. `cancelled` is asked between prefill chunks: when it returns True the
        stream ends without a token (closing the iterator is what stops decoding)."""
        self._check_open()
        request = prepare(self, prompt, **options)
        stops = StopText(stop)
        if self._active is not None:  # an unfinished stream: end it before touching the cache
            self._active.close()
        if seed is not None:
            mx.random.seed(seed)
        self._active = run(self, request, stops, cancelled)
        return self._active

    def generate(self, prompt: Prompt, **kwargs) -> str:
        """The generated text (stop strings excluded); takes the same arguments as `stream`."""
        return "".join(r.text for r in self.stream(prompt, **kwargs))

    def open_batch(self, max_streams: int) -> Batch:
        """A `Batch` decoding up to `max_streams` requests of this session together. Raises
        ValueError saying why where this session cannot batch: a quantized KV cache (mlx-lm
        cannot merge one into a batch), a model split across ranks (every rank would have to
        admit and drop the same requests at the same steps)."""
        self._check_open()
        if self.kv.kv_bits is not None:
            raise ValueError("a quantized KV cache (kv_bits) cannot be batched by mlx-lm")
        if self.stage is not None:
            raise ValueError("a model split across ranks decodes one request at a time")
        return Batch(self, max_streams)

    # -- state ------------------------------------------------------------------------------

    def stats(self, *, window: bool = True) -> dict:
        """Expert cache statistics and budget (from moe-core) plus this session's own;
        `window=False` leaves out moe-core's costly Belady window (`OffloadHandle.stats`)."""
        stats = self.handle.stats(window=window)
        stats["session"] = {
            **self._counters.as_dict(),
            "model": self.model_id,
            "cached_tokens": len(self._cache.tokens),
            "prefix_cache": dict(self._cache.counts),
            "prompt_cache": self._cache.store.stats(),
            "process_memory": self.handle.backend.process_memory(),
            "warm_start": dict(self._warm.info),
        }
        if self.stage is not None:
            stats["pipeline"] = self.stage.as_dict()
        stats["kv"] = {
            **dataclasses.asdict(self.kv),
            "reserve_bytes": self.kv.reserve_bytes,
        }
        return stats

    def save_warm_state(self) -> Path | None:
        """Write expert use counts and the resident set for the next start (also `close`)."""
        return self._warm.save(self.handle)

    def close(self) -> None:
        if self._closed:
            return
        if self._active is not None:
            self._active.close()
        if self.stage is not None:  # the step computed ahead of the last token ends everywhere
            mx.synchronize(generation_stream)
        try:
            self.save_warm_state()
        finally:
            self._closed = True
            self._cache.clear()
            self.handle.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this session is closed")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
