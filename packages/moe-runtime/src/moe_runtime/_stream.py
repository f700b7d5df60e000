"""One request of a session: checked and turned into what mlx-lm samples with (`prepare`, shared
with `Batch.add`), then decoded alone (`run`): prefilled through the session's prompt cache and
decoded by mlx-lm's `stream_generate`, the cache committed after, also when the caller stops early.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import GenerationResponse, maybe_quantize_kv_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from ._stops import StopText
from ._template import Prompt, is_chat, message_boundary

if TYPE_CHECKING:
    from ._session import Session


@dataclasses.dataclass(slots=True, frozen=True)
class Sampling:
    """How a request picks its tokens: `Session.stream`'s and `Batch.add`'s sampling arguments,
    mlx-lm's sampler and logits processors. The penalties and `logit_bias` are mlx-lm's logits
    processors; `logits_processors` are more of them (e.g. a grammar's mask), applied after those."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    logits_processors: list | None = None

    def sampler(self) -> Callable:
        return make_sampler(
            temp=self.temperature, top_p=self.top_p, min_p=self.min_p, top_k=self.top_k
        )

    def processors(self) -> list:
        return make_logits_processors(
            self.logit_bias,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
        ) + list(self.logits_processors or ())


@dataclasses.dataclass(slots=True, frozen=True)
class Request:
    tokens: list[int]  # the prompt
    max_tokens: int  # within the context
    sampler: Callable
    processors: list
    boundary: int | None  # where a chat prompt's last message ends, for the prompt cache


class Counters:
    """A session's requests as they happen: `run` and `Batch` count them through these methods,
    `Session.stats` reads `as_dict()`."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, Any] = dict(
            requests=0,
            prompt_tokens=0,
            generated_tokens=0,
            prefix_tokens_reused=0,
            prefilled_tokens=0,
            cancelled=0,
            last_ttft_s=None,
        )

    def prefilled(self, prompt_tokens: int, reused: int) -> None:
        """A request's prompt is in the cache, `reused` of its tokens from a prompt cache."""
        counts = self._counts
        counts["requests"] += 1
        counts["prompt_tokens"] += prompt_tokens
        counts["prefix_tokens_reused"] += reused
        counts["prefilled_tokens"] += prompt_tokens - reused

    def first_token(self, seconds: float) -> None:
        self._counts["last_ttft_s"] = seconds

    def generated(self, tokens: int) -> None:
        self._counts["generated_tokens"] += tokens

    def cancel(self) -> None:
        self._counts["cancelled"] += 1

    def as_dict(self) -> dict[str, Any]:
        return dict(self._counts)


def prepare(
    session: Session,
    prompt: Prompt,
    *,
    max_tokens: int = 256,
    tools: list[dict] | None = None,
    chat_template_kwargs: dict | None = None,
    **sampling,
) -> Request:
    """One request's prompt tokens, token limit (within the context), sampler and logits
    processors: what `Session.stream` and `Batch.add` check and build alike. `sampling`:
    `Sampling`'s fields."""
    how = Sampling(**sampling)
    tokens = session.encode_prompt(prompt, tools=tools, chat_template_kwargs=chat_template_kwargs)
    limit = session.kv.max_context
    if len(tokens) >= limit:
        raise ValueError(f"prompt has {len(tokens)} tokens; this session's max_context is {limit}")
    room = limit - len(tokens)
    if max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be positive (or -1 for no limit), got {max_tokens}")
    max_tokens = room if max_tokens == -1 else min(max_tokens, room)
    boundary = _boundary(session, prompt, tokens, tools, chat_template_kwargs)
    return Request(tokens, max_tokens, how.sampler(), how.processors(), boundary)


def _boundary(session: Session, prompt, tokens, tools, chat_template_kwargs) -> int | None:
    """Where a chat prompt's last message ends, for a cache that cannot be trimmed to be
    snapshotted there (on a split model some ranks' can: every rank finds the boundary)."""
    cache = session._cache
    trims = session.stage is None and cache.trimmable
    if not cache.enabled or trims or not is_chat(prompt):
        return None
    return message_boundary(
        session.tokenizer, prompt, tools, tokens, **(chat_template_kwargs or {})
    )


def run(
    session: Session,
    request: Request,
    stops: StopText,
    cancelled: Callable[[], bool] | None = None,
) -> Generator[GenerationResponse, None, None]:
    """Prefill `request` through the session's prompt cache, then yield mlx-lm's responses, one
    per token, with stop strings held back. Ends with `session._active` cleared."""
    tic = time.perf_counter()
    cache, kv, counters = session._cache, session.kv, session._counters
    tokens = request.tokens
    generated: list[int] = []
    clean = partial = False
    try:
        reused = cache.prepare(tokens)
        quantize = functools.partial(
            maybe_quantize_kv_cache,
            quantized_kv_start=0,
            kv_group_size=kv.group_size,
            kv_bits=kv.kv_bits,
        )
        if not cache.prefill(tokens, quantize, cancelled, boundary=request.boundary):
            partial = True  # the cache holds the chunks fed so far, a prefix of `tokens`
            counters.cancel()
            return
        counters.prefilled(len(tokens), reused)
        responses = mlx_lm.stream_generate(
            session.model,
            session.tokenizer,
            mx.array(tokens[-1:]),
            max_tokens=request.max_tokens,
            sampler=request.sampler,
            logits_processors=_with_history(request.processors, tokens[:-1]),
            prompt_cache=cache.cache,
            kv_bits=kv.kv_bits,
            kv_group_size=kv.group_size,
            quantized_kv_start=0,
        )
        try:
            for r in responses:
                generated.append(r.token)
                if len(generated) == 1:
                    ttft = time.perf_counter() - tic
                    counters.first_token(ttft)
                text, stopped = stops.feed(r.text)
                finish = "stop" if stopped else r.finish_reason
                if finish is not None and not stopped:
                    text += stops.flush()
                fields = {f.name: getattr(r, f.name) for f in _FIELDS}
                fields.update(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(tokens),
                    prompt_tps=(len(tokens) - reused) / ttft,
                )
                yield Response(**fields, cached_tokens=reused)
                if finish is not None:
                    break
            clean = True
        finally:
            responses.close()
    except GeneratorExit:
        clean = True  # closed by the caller between tokens: the cache is consistent
        counters.cancel()
        raise
    finally:
        # The cache has seen the prompt and every generated token (mlx-lm feeds each token
        # before yielding it); after an error mid-step it may hold anything: drop it.
        if clean:
            cache.commit(tokens + generated)
        elif not partial:  # a cancelled prefill left a prefix the cache holds exactly
            cache.reset()
        counters.generated(len(generated))
        session._active = None


@dataclasses.dataclass
class Response(GenerationResponse):
    """mlx-lm's `GenerationResponse` and how many prompt tokens came from a prompt cache."""

    cached_tokens: int = 0


_FIELDS = dataclasses.fields(GenerationResponse)


def _with_history(processors, history: list[int]):
    """mlx-lm's logits processors see the tokens fed in this call only; prepend what the cache
    already holds so a repetition penalty sees the same context as without the prefix cache."""
    if not processors or not history:
        return processors
    prefix = mx.array(history)
    return [
        lambda tokens, logits, p=p: p(mx.concatenate([prefix, tokens]), logits) for p in processors
    ]
