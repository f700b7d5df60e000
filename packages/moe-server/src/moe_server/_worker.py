"""The one thread that runs the model.

MLX is not thread-safe, so every `provider.stream` and `provider.stats` call happens here and
the event loop only moves events. Requests wait in a bounded queue; a full queue refuses at
once (the APIs answer 429/529) with the time a slot is expected to free, instead of letting
latency grow without bound. At shutdown the worker drains: it takes no new job, fails those
waiting, and gives the running one a grace period.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from moe_runtime import StopText

from ._live import Sampler
from ._provider import Provider
from ._reasoning import Reasoning, ReasoningSplitter
from ._text import ToolCall, ToolScanner

log = logging.getLogger("moe_server")


class Unavailable(Exception):
    """The worker takes no job now: Overloaded or ShuttingDown."""


class Overloaded(Unavailable):
    """The queue is full; a slot is expected to free in `retry_after` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"the queue is full; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class ShuttingDown(Unavailable):
    """The server is stopping and takes no new work."""


SHUTDOWN = "the server is shutting down; retry on another or after it restarts"


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


@dataclass(slots=True)
class Job:
    """One generation: what to run, where its events go, and a flag to stop it."""

    prompt: Any
    sampling: dict
    stops: list[str]
    tools: ToolScanner
    prompt_tokens: int
    loop: asyncio.AbstractEventLoop
    reasoning: ReasoningSplitter = field(default_factory=lambda: ReasoningSplitter(None, None))
    logprobs: int | None = None  # None: none; n: the chosen token's and the n most likely
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)

    shutdown: bool = False  # cancelled because the server is stopping, not by its client

    def emit(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled.set()

    def end(self) -> Failure:
        """The Failure a cancelled job ends with."""
        return Failure(SHUTDOWN, shutdown=True) if self.shutdown else Failure("cancelled")


class Worker:
    """Owns the provider: a thread that runs queued jobs one at a time."""

    # What a job is taken to last before one has finished (then: a running mean of their times).
    FIRST_GUESS_S = 1.0

    def __init__(self, provider: Provider, *, max_queue: int):
        self.provider = provider
        self.max_queue = max_queue
        # Touched only on the event loop:
        self.waiting = 0
        self.running = 0
        self.draining = False
        self.job_seconds = self.FIRST_GUESS_S
        self._queued: collections.deque[Job] = collections.deque()
        self._current: tuple[Job, float] | None = None  # the running job and when it started
        self._promised: list[float] = []  # when refused clients were told a slot frees
        self.live = Sampler(provider)  # what the live page shows, sampled on this thread
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="moe-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> Job:
        """Queue a job, or raise Overloaded or ShuttingDown. Call on the event loop."""
        if self.draining:
            raise ShuttingDown
        # The running job does not count: max_queue is how many may wait behind it.
        if self.waiting >= self.max_queue and (self.waiting or self.running):
            raise Overloaded(self.retry_after())
        self.waiting += 1
        self._queued.append(job)
        self._jobs.put(job)
        return job

    def retry_after(self) -> float:
        """Seconds until a slot is expected to free for a client refused now: the running job's
        rest, then one job for each client refused before it that has not come back yet, so
        refused clients return one at a time rather than all at once. Half a job more: coming
        back a little late costs nothing while the queue is full, coming early is refused."""
        now = time.monotonic()
        self._promised = [t for t in self._promised if t > now]
        rest = self.job_seconds
        if self._current is not None:
            rest = max(self.job_seconds - (now - self._current[1]), 0.1 * self.job_seconds)
        wait = rest + (len(self._promised) + 0.5) * self.job_seconds
        self._promised.append(now + wait)
        return wait

    def drain(self, grace: float) -> None:
        """Stop taking work: queued jobs end now with a shutdown Failure, the running one gets
        `grace` seconds to finish before it is ended the same way. Call on the event loop."""
        self.draining = True
        for job in self._queued:
            job.shutdown = True
            job.cancel()
            job.events.put_nowait(job.end())
        if self._current is not None:
            job = self._current[0]
            asyncio.get_running_loop().call_later(grace, self._end_running, job)

    def _end_running(self, job: Job) -> None:
        if self._current is not None and self._current[0] is job:
            job.shutdown = True
            job.cancel()

    def _started(self, job: Job) -> None:
        self.waiting -= 1
        self.running += 1
        if self._queued and self._queued[0] is job:
            self._queued.popleft()
        else:
            self._queued.remove(job)
        self._current = (job, time.monotonic())

    def _ended(self, job: Job, seconds: float | None) -> None:
        self.running -= 1
        self._current = None
        if seconds is not None:  # a job that ran: its time moves the running mean
            self.job_seconds += 0.3 * (seconds - self.job_seconds)

    @property
    def last_stats(self) -> dict:
        """`provider.stats()` as the latest full sample read it (at start, after each job)."""
        return self.live.full

    def _next_job(self) -> Job | None:
        """The next job; while none comes, the sample the last one owes is taken when due."""
        while True:
            try:
                return self._jobs.get(timeout=self.live.owed_in())
            except queue.Empty:
                self.live.after_job()

    def _run(self) -> None:
        self.live.after_job()
        while (job := self._next_job()) is not None:
            job.loop.call_soon_threadsafe(self._started, job)
            self.live.begin(job)
            outcome = "failed"
            started, seconds = time.perf_counter(), None
            try:
                if not job.cancelled.is_set():
                    outcome = self._generate(job)
                    if outcome != "cancelled":
                        seconds = time.perf_counter() - started
                else:
                    outcome = "cancelled"
                    job.emit(job.end())
            except Exception as e:  # a failing generation must not take the server down
                log.exception("generation failed")
                job.emit(Failure(f"{type(e).__name__}: {e}"))
            finally:
                self.live.end(job, outcome)
                self.live.after_job()
                job.loop.call_soon_threadsafe(self._ended, job, seconds)

    def _generate(self, job: Job) -> str:
        """Run one job; returns its outcome (a finish reason, or "cancelled")."""
        stops = StopText(job.stops)
        scanner = job.tools
        first_token_at = None
        last = None
        finish_reason = None
        iterator = self.provider.stream(job.prompt, cancelled=job.cancelled.is_set, **job.sampling)
        try:
            for response in iterator:
                if job.cancelled.is_set():
                    break
                now = time.perf_counter()
                if first_token_at is None:
                    first_token_at = now
                self.live.token(job, now)
                last = response
                if job.logprobs is not None:
                    job.emit(self._logprob(response, job.logprobs))
                text, stopped = stops.feed(response.text)
                self._route(job, job.reasoning.feed(text))
                if stopped:
                    finish_reason = "stop_sequence"
                    break
                if response.finish_reason is not None:
                    finish_reason = response.finish_reason
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        if job.cancelled.is_set():
            job.emit(job.end())
            return "cancelled"
        if finish_reason is None:
            # An iterator that ends without a finish reason ran out of tokens.
            finish_reason = "length" if last is not None else "stop"
        tail = stops.flush() if finish_reason != "stop_sequence" else ""
        self._route(job, [*job.reasoning.feed(tail), *job.reasoning.flush()])
        for item in scanner.finish(finish_reason):
            job.emit(item)
        if scanner.calls and finish_reason != "length":
            finish_reason = "tool_calls"
        job.emit(
            Finish(
                reason=finish_reason,
                stop_sequence=stops.matched,
                # The whole prompt, even when the session reused a cached prefix of it.
                prompt_tokens=job.prompt_tokens,
                completion_tokens=getattr(last, "generation_tokens", 0) if last else 0,
                ttft_s=(first_token_at - job.submitted) if first_token_at else None,
                generation_tps=float(getattr(last, "generation_tps", 0.0) or 0.0),
                cached_tokens=int(getattr(last, "cached_tokens", 0) or 0) if last else 0,
            )
        )
        return finish_reason

    @staticmethod
    def _route(job: Job, pieces: list) -> None:
        """Reasoning goes straight out; answer text through the tool-call scanner."""
        for piece in pieces:
            if isinstance(piece, Reasoning):
                job.emit(piece)
            else:
                for item in job.tools.feed(piece):
                    job.emit(item)

    def _logprob(self, response: Any, top: int) -> TokenLogprob:
        import mlx.core as mx  # the worker thread is the one that runs MLX

        logprobs = response.logprobs
        token = int(response.token)
        alternatives: list[tuple[str, float]] = []
        if top > 0:
            ids = mx.argpartition(-logprobs, kth=top - 1)[:top]
            values = logprobs[ids].tolist()
            pairs = sorted(zip(values, ids.tolist(), strict=True), reverse=True)
            alternatives = [(self._token_text(i), _finite(v)) for v, i in pairs]
        return TokenLogprob(self._token_text(token), _finite(logprobs[token].item()), alternatives)

    def _token_text(self, token: int) -> str:
        return self.provider.tokenizer.decode([token])


def _finite(logprob: float) -> float:
    """JSON has no -inf; a token a grammar or bias ruled out gets OpenAI's floor instead."""
    return max(float(logprob), -9999.0)


__all__ = [
    "Failure",
    "Finish",
    "Job",
    "Overloaded",
    "ShuttingDown",
    "TokenLogprob",
    "ToolCall",
    "Unavailable",
    "Worker",
]
