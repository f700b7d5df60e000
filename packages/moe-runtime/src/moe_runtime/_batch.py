"""`Batch`: several requests decoded together, one model step for all of them.

mlx-lm's `BatchGenerator` runs the steps: each request's cache joins a batched cache (left
padded, masked), every step feeds one token per request, and the offloaded banks serve the
union of the requests' experts in that step. A request joins between two steps and leaves when it
finishes, is stopped by a stop string or is removed; the others go on.

Each request is prefilled alone, through the session's prompt cache (so a conversation's next
turn still prefills only its new tokens), then its cache moves into the batch; when it finishes,
its cache comes back as the prompt cache's live one. Sampling, logits processors, the token
limit and stop strings are per request. A sampled request with a `seed` cannot join (`alone`
says why): its tokens would depend on what the others draw from MLX's one random state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationResponse

from ._stops import StopText
from ._stream import Response, prepare

if TYPE_CHECKING:
    from ._session import Session


@dataclass(slots=True)
class _Stream:
    """One request in the batch: what turns its tokens into responses."""

    tokens: list[int]  # the prompt
    reused: int  # prompt tokens the prompt cache already held
    detokenizer: Any
    stops: StopText
    started: float  # when it was added
    first: float | None = None  # when its first token came
    generated: int = 0


class Batch:
    """Requests of one session decoded together, at most `max_streams` at a time.

    On the session's thread only, like the session itself. `add` prefills a request and returns
    its id; each `step` feeds one token to every request and returns `(id, response)` pairs, one
    per request, in mlx-lm's `GenerationResponse` shape (as `Session.stream` yields them); a
    response with a `finish_reason` is the request's last. `remove` ends a request early.
    """

    def __init__(self, session: Session, max_streams: int):
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        self.session = session
        self.max_streams = max_streams
        self._generator = BatchGenerator(
            session.model,
            stop_tokens=[[t] for t in session.tokenizer.eos_token_ids],
            completion_batch_size=max_streams,
            prefill_batch_size=max_streams,
        )
        self._streams: dict[int, _Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    @staticmethod
    def alone(**options) -> str | None:
        """Why a request with these `Session.stream` arguments must run alone, or None.

        A seeded sampled request: MLX has one random state, which every request in the batch
        draws from in turn, so its tokens would depend on the others (this MLX cannot set the
        state to a key of the request's own)."""
        if options.get("seed") is not None and options.get("temperature", 0.0) > 0:
            return "a seeded sampled request runs alone, to draw the tokens its seed gives"
        return None

    def add(
        self,
        prompt,
        *,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancelled: Callable[[], bool] | None = None,
        **options,
    ) -> int | None:
        """Prefill one request (the others wait meanwhile) and let it join the batch; returns
        its id, or None when `cancelled` said so during the prefill. Takes `Session.stream`'s
        arguments; raises ValueError for the same mistakes."""
        session = self.session
        session._check_open()
        reason = self.alone(seed=seed, **options)
        if reason is not None:
            raise ValueError(reason)
        if len(self._streams) >= self.max_streams:
            raise RuntimeError(f"the batch is full ({self.max_streams} requests)")
        started = time.perf_counter()
        request = prepare(session, prompt, **options)
        tokens, sampler = request.tokens, request.sampler
        if session._active is not None:  # a stream of the session's own: end it first
            session._active.close()
        cache = session._cache
        try:
            reused = cache.prepare(tokens)
            fed = cache.prefill(tokens, lambda _: None, cancelled, boundary=request.boundary)
        except BaseException:
            cache.reset()  # an error mid-chunk (a failed read) may leave any state: drop it
            raise
        if not fed:  # the cache holds the chunks fed so far, a prefix the next prompt reuses
            session._counters.cancel()
            return None
        session._counters.prefilled(len(tokens), reused)
        if options.get("temperature", 0.0) == 0:
            # The batch's own argmax (None, which mlx-lm's annotation leaves out): one call for
            # every greedy request.
            sampler = None  # type: ignore[assignment]
        (uid,) = self._generator.insert(
            [tokens[-1:]],
            max_tokens=[request.max_tokens],
            caches=[cache.detach()],
            all_tokens=[tokens[:-1]],  # what the cache holds; processors see it as context
            samplers=[sampler],
            logits_processors=[request.processors],
        )
        detokenizer = session.tokenizer.detokenizer
        detokenizer.reset()
        self._streams[uid] = _Stream(tokens, reused, detokenizer, StopText(stop), started)
        return uid

    def step(self) -> list[tuple[int, GenerationResponse]]:
        """Feed every request one token; one response per request."""
        out = []
        finished = []
        for r in self._generator.next_generated():
            stream = self._streams[r.uid]
            now = time.perf_counter()
            if stream.first is None:
                stream.first = now
                self.session._counters.first_token(now - stream.started)
            stream.generated += 1
            # As mlx-lm's stream_generate: an end token adds no text.
            if r.finish_reason != "stop":
                stream.detokenizer.add_token(r.token)
            if r.finish_reason is not None:
                stream.detokenizer.finalize()
            text, stopped = stream.stops.feed(stream.detokenizer.last_segment)
            finish = "stop" if stopped else r.finish_reason
            if finish is not None and not stopped:
                text += stream.stops.flush()
            out.append((r.uid, self._response(stream, r, text, finish, now)))
            if r.finish_reason is not None:
                self._finished(r.uid, r.prompt_cache, r.all_tokens)
            elif stopped:
                finished.append(r.uid)
        for uid in finished:
            self._leave(uid)
        return out

    def remove(self, uid: int) -> None:
        """End a request before its last token (counted as cancelled, as closing a stream is)."""
        if uid in self._streams:
            self.session._counters.cancel()
            self._leave(uid)

    def _leave(self, uid: int) -> None:
        caches = self._generator.remove([uid], return_prompt_caches=True)
        cache, tokens = caches.get(uid, (None, None))
        self._finished(uid, cache, tokens)

    def _finished(self, uid: int, cache: list | None, tokens: list[int] | None) -> None:
        stream = self._streams.pop(uid)
        self.session._counters.generated(stream.generated)
        if cache is not None and tokens is not None:
            # The next turn of this conversation reuses what this request computed. Evaluated
            # now: a lazy slice of the batch's cache would keep all of it alive, and could not
            # be computed on another thread (mlx-lm's generation stream is per thread).
            mx.eval([c.state for c in cache])
            self.session._cache.adopt(cache, list(tokens))

    def _response(self, stream: _Stream, r, text: str, finish, now: float) -> GenerationResponse:
        first = stream.first
        assert first is not None  # set when its first token came, before any response
        ttft = first - stream.started
        decode = now - first
        return Response(
            text=text,
            token=r.token,
            logprobs=r.logprobs,
            from_draft=False,
            prompt_tokens=len(stream.tokens),
            prompt_tps=(len(stream.tokens) - stream.reused) / ttft if ttft > 0 else 0.0,
            generation_tokens=stream.generated,
            generation_tps=stream.generated / decode if decode > 0 else 0.0,
            peak_memory=mx.get_peak_memory() / 1e9,
            finish_reason=finish,
            cached_tokens=stream.reused,
        )

    def close(self) -> None:
        for uid in list(self._streams):
            self._leave(uid)
        self._generator.close()
