"""One job's output, token by token: stop strings, reasoning, tool calls, logprobs, the finish.

The same whether the job runs alone or in a batch: the worker feeds it each of the job's
responses, on the worker thread, and it emits the job's events."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from moe_runtime import StopText

from ._reasoning import Reasoning


@dataclass(slots=True)
class Finish:
    reason: str  # "stop" | "length" | "tool_calls" | "stop_sequence"
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    generation_tps: float
    cached_tokens: int = 0  # of prompt_tokens, those a prompt cache held (none prefilled)


@dataclass(slots=True)
class Failure:
    message: str  # "cancelled" when the client left: nobody is there to tell
    shutdown: bool = False  # ended by the server stopping (503/529, worth a retry)


@dataclass(slots=True)
class TokenLogprob:
    """One generated token's log probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


class Output:
    """Turns one job's responses into its events; `feed` until it says the job is done, then
    `close`, which emits the Finish (or the Failure of a cancelled job) and returns the outcome:
    a finish reason, or "cancelled"."""

    def __init__(self, job: Any, tokenizer: Any):
        self.job = job
        self.tokenizer = tokenizer
        self.stops = StopText(job.stops)
        self.first_token_at: float | None = None
        self.last = None
        self.finish_reason: str | None = None

    def feed(self, response: Any) -> bool:
        """One token's response; True when the job is done (a stop string or its last token)."""
        job = self.job
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.last = response
        if job.logprobs is not None:
            job.emit(self._logprob(response, job.logprobs))
        text, stopped = self.stops.feed(response.text)
        self._route(job.reasoning.feed(text))
        if stopped:
            self.finish_reason = "stop_sequence"
        elif response.finish_reason is not None:
            self.finish_reason = response.finish_reason
        return self.finish_reason is not None

    def close(self) -> str:
        job = self.job
        if job.cancelled.is_set():
            job.emit(job.end())
            return "cancelled"
        finish_reason = self.finish_reason
        if finish_reason is None:
            # An iterator that ends without a finish reason ran out of tokens.
            finish_reason = "length" if self.last is not None else "stop"
        tail = self.stops.flush() if finish_reason != "stop_sequence" else ""
        self._route([*job.reasoning.feed(tail), *job.reasoning.flush()])
        for item in job.tools.finish(finish_reason):
            job.emit(item)
        if job.tools.calls and finish_reason != "length":
            finish_reason = "tool_calls"
        last = self.last
        job.emit(
            Finish(
                reason=finish_reason,
                stop_sequence=self.stops.matched,
                # The whole prompt, even when the session reused a cached prefix of it.
                prompt_tokens=job.prompt_tokens,
                completion_tokens=getattr(last, "generation_tokens", 0) if last else 0,
                ttft_s=(self.first_token_at - job.submitted) if self.first_token_at else None,
                generation_tps=float(getattr(last, "generation_tps", 0.0) or 0.0),
                cached_tokens=int(getattr(last, "cached_tokens", 0) or 0) if last else 0,
            )
        )
        return finish_reason

    def _route(self, pieces: list) -> None:
        """Reasoning goes straight out; answer text through the tool-call scanner."""
        job = self.job
        for piece in pieces:
            if isinstance(piece, Reasoning):
                job.emit(piece)
            else:
                for item in job.tools.feed(piece):
                    job.emit(item)

    def _logprob(self, response: Any, top: int):
        import mlx.core as mx  # the worker thread is the one that runs MLX

        logprobs = response.logprobs
        token = int(response.token)
        alternatives: list[tuple[str, float]] = []
        if top > 0:
            ids = mx.argpartition(-logprobs, kth=top - 1)[:top]
            values = cast("list[float]", logprobs[ids].tolist())
            top_ids = cast("list[int]", ids.tolist())
            pairs = sorted(zip(values, top_ids, strict=True), reverse=True)
            alternatives = [(self._token_text(i), _finite(v)) for v, i in pairs]
        return TokenLogprob(self._token_text(token), _finite(logprobs[token].item()), alternatives)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])


def _finite(logprob: float) -> float:
    """JSON has no -inf; a token a grammar or bias ruled out gets OpenAI's floor instead."""
    return max(float(logprob), -9999.0)
