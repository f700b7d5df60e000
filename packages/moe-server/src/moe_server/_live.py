"""What the live page is built from, sampled on the worker thread.

The worker owns MLX, so everything that reads the model's state runs there: between two tokens,
at most every `interval` seconds and only while a page is listening, and once after every job.
Every sample, the one after a job included, is charged to a budget of `share` of the worker's
time: a sample that took c seconds lets the next come c / share seconds after it at the
earliest. The one after a job is owed, not skipped, when the budget is spent: the worker takes it
once the budget allows, while idle or between the next job's tokens. The samples between tokens
ask `provider.stats(window=False)`: the one costly part of the stats, moe-core's Belady window
(milliseconds of CPU per layer every 256 steps, many times that in wall time on a loaded
machine), is not shown on the page; the sample at start and after each job reads it for
`/metrics` (`full`), as it did before the page existed.
A sample is counters the core already keeps (`provider.stats()`), the resident and pinned experts
(`handle.resident()`, `handle.pinned()`: host-side tables, no device sync), the experts read and
evicted since the previous sample (an observer of the offload handle, attached only while a page
listens) and what this module counts itself with one clock read per token. The event loop only
reads the samples.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("moe_server")

# One byte per (layer, expert) cell of the residency grid.
ABSENT, RESIDENT, PINNED, PAD = 0, 1, 3, 255  # PINNED includes RESIDENT's bit
READ, EVICTED = 4, 8  # set by the feed from the difference between two grids


@dataclass(slots=True, frozen=True)
class Sample:
    """The server's state at one instant; counters are cumulative since the server started."""

    seq: int
    t: float  # time.time()
    tokens: int  # tokens generated, all jobs together
    decode_tokens: int  # tokens after each job's first
    decode_s: float  # seconds between consecutive tokens of a job (prefill and idle excluded)
    hits: int
    misses: int
    bytes_read: int
    read_seconds: float
    process_memory: int | None
    peak_memory: int | None
    grid: np.ndarray | None  # [layers, experts] uint8 cells, None without an offload handle
    stats: dict  # provider.stats() as it was
    sampling_s: float  # time the worker spent taking samples, this one included
    # READ and EVICTED bits of the experts read and evicted since the previous sample; None when
    # nothing observed them (no page listened, or the provider has no observable handle)
    activity: np.ndarray | None = None


class Activity:
    """An observer of an offload handle (`handle.observe`): marks the experts read and evicted.

    The handle calls it on the worker thread during the forward pass; it only sets bits, and the
    sampler takes them, on the same thread."""

    def __init__(self, num_experts: list[int]):
        self._shape = (len(num_experts), max(num_experts, default=0))
        self.flags = np.zeros(self._shape, dtype=np.uint8)

    def on_reads(self, layer: int, experts: np.ndarray) -> None:
        self.flags[layer, experts] |= READ

    def on_evictions(self, layer: int, experts: np.ndarray) -> None:
        self.flags[layer, experts] |= EVICTED

    def take(self) -> np.ndarray:
        flags, self.flags = self.flags, np.zeros(self._shape, dtype=np.uint8)
        return flags


@dataclass(slots=True)
class _Job:
    submitted: float
    prompt_tokens: int
    first: float | None = None
    last: float = 0.0  # set with `first`
    tokens: int = 0


@dataclass(slots=True)
class Sampler:
    """Worker-side counters and samples. `listeners` is set by the event loop (a plain int)."""

    provider: Any
    interval: float = 0.25
    share: float = 0.01  # of the worker's time, at most, spent sampling while it generates
    listeners: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=16))  # the latest samples
    requests: deque = field(default_factory=lambda: deque(maxlen=512))  # (id, record)
    _tokens: int = 0
    _decode_tokens: int = 0
    _decode_s: float = 0.0
    _seq: int = 0
    _requests: int = 0
    owed: bool = False  # the sample after a job is still to be taken (the budget was spent)
    full: dict = field(default_factory=dict)  # provider.stats() of the latest full sample
    _sampled: float = 0.0
    _free_at: float = 0.0  # perf_counter() from which the budget allows the next sample
    _spent: float = 0.0
    _activity: Activity | None = None
    _jobs: dict[int, _Job] = field(default_factory=dict)

    # -- called by the worker ----------------------------------------------------------------
    @property
    def latest(self) -> Sample | None:
        return self.recent[-1] if self.recent else None

    def begin(self, job: Any) -> None:
        self._jobs[id(job)] = _Job(job.submitted, job.prompt_tokens)
        self._follow()

    def token(self, job: Any, now: float) -> None:
        """One token of `job` reached the server; samples when one is due and a page listens."""
        state = self._jobs[id(job)]
        if state.first is None:
            state.first = now
        else:
            self._decode_tokens += 1
            self._decode_s += now - state.last
        state.last = now
        state.tokens += 1
        self._tokens += 1
        # Only the page's light samples come between tokens: an owed full sample waits for the
        # end of a job or an idle worker, since its Belady replay would cost this request's tok/s.
        if self.listeners and now >= self._free_at and now - self._sampled >= self.interval:
            self.sample(now, full=False)

    def after_job(self) -> Sample | None:
        """The sample after a job (the state /metrics shows, the page's last frame of it): taken
        now if the budget allows, else owed (`owed_in`): taken while the worker is idle, or after
        the next job, never between tokens."""
        self.owed = True
        return self.sample() if time.perf_counter() >= self._free_at else None

    def owed_in(self) -> float | None:
        """Seconds until the owed sample may be taken; None when none is owed."""
        return max(0.0, self._free_at - time.perf_counter()) if self.owed else None

    def end(self, job: Any, outcome: str) -> None:
        """Record one finished request: its time to first token, tokens, decode speed, outcome."""
        state = self._jobs.pop(id(job), None)
        if state is None:
            return
        decode = (state.last - state.first) if state.first is not None else 0.0
        self._requests += 1
        self.requests.append(
            (
                self._requests,
                {
                    "id": self._requests,
                    "t": time.time(),
                    "ttft_s": None if state.first is None else state.first - state.submitted,
                    "prompt_tokens": state.prompt_tokens,
                    "tokens": state.tokens,
                    "tok_s": (state.tokens - 1) / decode if decode > 0 else None,
                    "outcome": outcome,
                },
            )
        )

    def sample(self, now: float | None = None, *, full: bool = True) -> Sample | None:
        """Read the provider's counters and resident sets; on the worker thread only. Not
        `full`: without what the page does not show (`provider.stats(window=False)`)."""
        start = time.perf_counter()
        self._sampled = start if now is None else now
        self.owed = self.owed and not full
        try:
            stats = (self.provider.stats() if full else self.provider.stats(window=False)) or {}
            if full:
                self.full = stats
            grid = residency(self.provider)
            activity = self._activity.take() if self._activity is not None else None
            self._follow()
        except Exception:  # the page must never take a generation down
            log.exception("sampling the provider for the live page failed")
            return None
        finally:  # charged to the budget, failed or not
            cost = time.perf_counter() - start
            self._spent += cost
            self._free_at = max(self._free_at, self._sampled) + cost / self.share
        session = stats.get("session") or {}
        self._seq += 1
        sample = Sample(
            seq=self._seq,
            t=time.time(),
            tokens=self._tokens,
            decode_tokens=self._decode_tokens,
            decode_s=self._decode_s,
            hits=int(stats.get("hits", 0)),
            misses=int(stats.get("misses", 0)),
            bytes_read=int(stats.get("bytes_read", 0)),
            read_seconds=float(stats.get("read_seconds", 0.0)),
            process_memory=session.get("process_memory"),
            peak_memory=stats.get("peak_memory"),
            grid=grid,
            stats=stats,
            sampling_s=self._spent,
            activity=activity,
        )
        self.recent.append(sample)
        return sample

    def _follow(self) -> None:
        """Observe the handle's reads and evictions while a page listens, not otherwise.

        On the worker thread: (un)observing hands over counts held on the device."""
        handle = getattr(self.provider, "handle", None)
        if handle is None or not hasattr(handle, "observe"):
            return
        if self.listeners and self._activity is None:
            self._activity = handle.observe(Activity(list(handle.num_experts)))
        elif not self.listeners and self._activity is not None:
            handle.unobserve(self._activity)
            self._activity = None


def residency(provider: Any) -> np.ndarray | None:
    """Per MoE layer and expert: absent, resident or pinned (PAD past a layer's last expert).

    Read from the provider's offload handle (`moe_runtime.Session.handle`); None without one.
    """
    handle = getattr(provider, "handle", None)
    if handle is None:
        return None
    num_experts = list(handle.num_experts)
    grid = np.full((len(num_experts), max(num_experts, default=0)), PAD, dtype=np.uint8)
    rows = zip(num_experts, handle.resident(), handle.pinned(), strict=True)
    for row, (n, resident, pinned) in zip(grid, rows, strict=True):
        row[:n] = ABSENT
        if resident:
            row[np.fromiter(resident, np.int64, len(resident))] = RESIDENT
        if pinned:
            row[np.fromiter(pinned, np.int64, len(pinned))] = PINNED
    return grid
