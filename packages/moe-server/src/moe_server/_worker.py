"""The one thread that runs the model.

MLX is not thread-safe, so every `provider.stream` and `provider.stats` call happens here and
the event loop only moves events. With `batch` > 1 and a provider that can (`open_batch`, a
`moe_runtime.Session`), up to `batch` jobs decode together: a job joins between two steps
(after its prefill, which the others wait for) and leaves when it ends. A job that cannot join
(`Batch.alone` says why: a seeded sampled request) waits for the batch to empty and runs alone,
as every job does with `batch` 1 or a provider that cannot batch (a model split across hosts, a
quantized KV cache). Requests wait in a bounded queue; a full queue refuses at once (the APIs
answer 429/529) with the time a slot is expected to free, instead of letting latency grow
without bound. At shutdown the worker drains: it takes no new job, fails those waiting, and
gives the running ones a grace period.
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

from ._live import Sampler
from ._output import Failure, Finish, Output, TokenLogprob
from ._provider import Provider
from ._reasoning import ReasoningSplitter
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
    """Owns the provider: a thread that runs queued jobs, up to `batch` of them together."""

    # What a job is taken to last before one has finished (then: a running mean of their times).
    FIRST_GUESS_S = 1.0

    def __init__(self, provider: Provider, *, max_queue: int, batch: int = 1):
        self.provider = provider
        self.max_queue = max_queue
        self.batch = batch  # jobs decoded together, at most (1 until the thread opens a batch)
        # Touched only on the event loop:
        self.waiting = 0
        self.running = 0
        self.draining = False
        self.job_seconds = self.FIRST_GUESS_S
        self._queued: collections.deque[Job] = collections.deque()
        self._running: dict[int, tuple[Job, float]] = {}  # id(job): the job, when it started
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
        # The running jobs do not count: max_queue is how many may wait behind them, beside
        # those a batch with room takes at once.
        room = self.max_queue + max(self.batch - self.running, 0)
        if self.waiting >= room and (self.waiting or self.running):
            raise Overloaded(self.retry_after())
        self.waiting += 1
        self._queued.append(job)
        self._jobs.put(job)
        return job

    def retry_after(self) -> float:
        """Seconds until a slot is expected to free for a client refused now: the rest of the
        running job nearest its end, then a slot's share of a job for each client refused
        before it that has not come back yet, so refused clients return one at a time rather
        than all at once. Half of that more: coming back a little late costs nothing while the
        queue is full, coming early is refused."""
        now = time.monotonic()
        self._promised = [t for t in self._promised if t > now]
        rest = self.job_seconds
        if self._running:
            oldest = min(started for _, started in self._running.values())
            rest = max(self.job_seconds - (now - oldest), 0.1 * self.job_seconds)
        each = self.job_seconds / max(self.batch, 1)
        wait = rest + (len(self._promised) + 0.5) * each
        self._promised.append(now + wait)
        return wait

    def drain(self, grace: float) -> None:
        """Stop taking work: queued jobs end now with a shutdown Failure, the running ones get
        `grace` seconds to finish before they are ended the same way. Call on the event loop."""
        self.draining = True
        for job in self._queued:
            job.shutdown = True
            job.cancel()
            job.events.put_nowait(job.end())
        loop = asyncio.get_running_loop()
        for job, _ in self._running.values():
            loop.call_later(grace, self._end_running, job)

    def _end_running(self, job: Job) -> None:
        if id(job) in self._running:
            job.shutdown = True
            job.cancel()

    def _started(self, job: Job) -> None:
        self.waiting -= 1
        self.running += 1
        if self._queued and self._queued[0] is job:
            self._queued.popleft()
        else:
            self._queued.remove(job)
        self._running[id(job)] = (job, time.monotonic())
        if self.draining:  # started after the drain: it gets no grace of its own
            self._end_running(job)

    def _ended(self, job: Job, seconds: float | None) -> None:
        self.running -= 1
        self._running.pop(id(job), None)
        if seconds is not None:  # a job that ran: its time moves the running mean
            self.job_seconds += 0.3 * (seconds - self.job_seconds)

    @property
    def last_stats(self) -> dict:
        """`provider.stats()` as the latest full sample read it (at start, after each job)."""
        return self.live.full

    # -- the worker thread -------------------------------------------------------------------

    def _next_job(self, wait: bool) -> Job | None:
        """The next job (raises queue.Empty when none is there and not `wait`); while waiting,
        the sample the last job owes is taken when due."""
        if not wait:
            return self._jobs.get_nowait()
        while True:
            try:
                return self._jobs.get(timeout=self.live.owed_in())
            except queue.Empty:
                self.live.after_job()

    def _run(self) -> None:
        self.live.after_job()
        batch = self._open_batch()
        active: dict[int, tuple[Output, float]] = {}  # the batch's jobs by id
        held: Job | None = None  # a job that runs alone once the batch has emptied
        stopping = False
        while True:
            # Take jobs while the batch has room; wait for one only when nothing runs.
            while not stopping and held is None and len(active) < self.batch:
                try:
                    job = self._next_job(wait=not active)
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                elif batch is None or batch.alone(**job.sampling) is not None:
                    held = job
                else:
                    self._join(batch, job, active)
            if active:
                if not self._step(batch, active):
                    batch = self._open_batch()  # a failed step may leave it in any state
            elif held is not None:
                self._alone(held)
                held = None
            elif stopping:
                if batch is not None:
                    batch.close()
                return

    def _open_batch(self) -> Any:
        """The provider's batch, or None: one job at a time."""
        if self.batch <= 1:
            return None
        open_batch = getattr(self.provider, "open_batch", None)
        try:
            if open_batch is None:
                raise ValueError(f"{type(self.provider).__name__} cannot batch")
            return open_batch(self.batch)
        except ValueError as e:
            log.warning("decoding one request at a time: %s", e)
            self.batch = 1
            return None

    def _begin(self, job: Job) -> None:
        job.loop.call_soon_threadsafe(self._started, job)
        self.live.begin(job)

    def _end(self, job: Job, outcome: str, seconds: float | None) -> None:
        self.live.end(job, outcome)
        self.live.after_job()
        job.loop.call_soon_threadsafe(self._ended, job, seconds)

    def _alone(self, job: Job) -> None:
        """Run one job through `provider.stream`, the batch empty."""
        self._begin(job)
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
            self._end(job, outcome, seconds)

    def _generate(self, job: Job) -> str:
        """Run one job; returns its outcome (a finish reason, or "cancelled")."""
        output = Output(job, self.provider.tokenizer)
        iterator = self.provider.stream(job.prompt, cancelled=job.cancelled.is_set, **job.sampling)
        try:
            for response in iterator:
                if job.cancelled.is_set():
                    break
                self.live.token(job, time.perf_counter())
                if output.feed(response):
                    break
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return output.close()

    def _join(self, batch: Any, job: Job, active: dict) -> None:
        """Prefill a job and add it to the batch (or end it: cancelled, failed)."""
        self._begin(job)
        started = time.perf_counter()
        if job.cancelled.is_set():
            job.emit(job.end())
            return self._end(job, "cancelled", None)
        try:
            uid = batch.add(job.prompt, cancelled=job.cancelled.is_set, **job.sampling)
        except Exception as e:  # the request's own fault (a prompt too long): the others go on
            log.exception("generation failed")
            job.emit(Failure(f"{type(e).__name__}: {e}"))
            return self._end(job, "failed", None)
        if uid is None:  # cancelled during its prefill
            job.emit(job.end())
            return self._end(job, "cancelled", None)
        active[uid] = (Output(job, self.provider.tokenizer), started)

    def _step(self, batch: Any, active: dict) -> bool:
        """One token for every job of the batch; False when the step failed (every job of the
        batch then ends with the error)."""
        try:
            responses = batch.step()
        except Exception as e:
            log.exception("batched generation failed")
            for output, _ in active.values():
                output.job.emit(Failure(f"{type(e).__name__}: {e}"))
                self._end(output.job, "failed", None)
            active.clear()
            return False
        now = time.perf_counter()
        for uid, response in responses:
            output, started = active[uid]
            if output.job.cancelled.is_set():
                continue
            self.live.token(output.job, now)
            if output.feed(response):
                if response.finish_reason is None:  # a stop string: the batch goes on
                    batch.remove(uid)
                del active[uid]
                self._end(output.job, output.close(), time.perf_counter() - started)
        for uid, (output, _) in list(active.items()):
            if output.job.cancelled.is_set():  # between two tokens: the others go on
                batch.remove(uid)
                del active[uid]
                self._end(output.job, output.close(), None)
        return True


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
