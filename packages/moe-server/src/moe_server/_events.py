"""The live page's event stream (`GET /live/events`, server-sent events).

A task on the event loop looks at the worker's latest sample a few times per second and, when
something changed, turns it into one frame that every open page receives: rates over about the
last second of samples, queue depth, requests that ended, memory, and the residency grid with
the experts read and evicted since the previous grid. It never calls the provider: the worker
samples (see `_live.py`), this only does arithmetic on what it left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ._live import EVICTED, PAD, READ, RESIDENT, Sample
from ._worker import Worker

KEEPALIVE_S = 15.0
RATE_WINDOW_S = 1.0  # rates span about this much time, so a frame's few tokens do not make noise
BACKLOG = 32  # frames a slow page may fall behind before it is sent a fresh start


class LiveFeed:
    """Coalesces the worker's samples into frames for every open page. Event loop only."""

    def __init__(
        self,
        worker: Worker,
        *,
        model: str,
        limits: dict,
        disk_mb_s: float | None = None,
        interval: float = 0.25,
        keep: int = 1200,
    ):
        self.worker, self.sampler = worker, worker.live
        self.model, self.limits, self.disk_mb_s = model, limits, disk_mb_s
        self.interval = interval
        self.sampler.interval = interval
        self.history: deque[dict] = deque(maxlen=keep)  # chart points, sent to a page that opens
        self.finished: deque[dict] = deque(maxlen=200)  # requests that ended
        self._pages: set[asyncio.Queue[str | None]] = set()
        self._seen: Sample | None = None
        self._recent: deque[Sample] = deque(maxlen=64)  # samples of the last RATE_WINDOW_S
        self._request_id = 0
        self._queue = (0, 0)
        self._task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for page in list(self._pages):
            _push(page, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            frame = self.step()
            if frame is not None:
                for page in list(self._pages):
                    _push(page, frame)

    # -- pages -------------------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue[str | None]:
        page: asyncio.Queue[str | None] = asyncio.Queue(maxsize=BACKLOG)
        self._pages.add(page)
        self.sampler.listeners = len(self._pages)
        return page

    def unsubscribe(self, page: asyncio.Queue) -> None:
        self._pages.discard(page)
        self.sampler.listeners = len(self._pages)

    # -- frames ------------------------------------------------------------------------------
    def step(self) -> str | None:
        """The next frame, or None when nothing changed since the last one."""
        seen = self._seen.seq if self._seen is not None else 0
        samples = [s for s in list(self.sampler.recent) if s.seq > seen]
        sample = samples[-1] if samples else None
        queue = (self.worker.waiting, self.worker.running)
        ended = self._pending_requests()
        if ended:
            self._request_id = ended[-1]["id"]
        fresh = sample is not None
        if not fresh and queue == self._queue and not ended:
            return None
        self._queue = queue
        frame: dict[str, Any] = {"waiting": queue[0], "running": queue[1]}
        point: dict[str, Any] = {
            "t": round(time.time(), 3),
            "waiting": queue[0],
            "running": queue[1],
        }
        if fresh:
            assert sample is not None
            base = self._window_start(sample)
            if base is not None:
                point.update(rates(base, sample))
            frame["memory"] = _memory(sample)
            frame["sampling_s"] = _round(sample.sampling_s)
            heat = heat_grid(self._seen, samples)
            if heat is not None:
                frame["heat"] = _b64(heat)
            self._seen = sample
            self._recent.append(sample)
        self.history.append(point)
        frame["point"] = point
        if ended:
            self.finished.extend(ended)
            frame["requests"] = ended
        return _event("tick", frame)

    def _window_start(self, sample: Sample) -> Sample | None:
        """The latest sample at least RATE_WINDOW_S older than `sample` (else the oldest kept)."""
        while len(self._recent) > 1 and self._recent[1].t <= sample.t - RATE_WINDOW_S:
            self._recent.popleft()
        return self._recent[0] if self._recent else None

    def _pending_requests(self) -> list[dict]:
        return [r for i, r in list(self.sampler.requests) if i > self._request_id]

    def hello(self) -> str:
        """Everything a page needs to draw itself now: settings, budget, history, the grid."""
        sample = self._seen or self.sampler.latest
        stats = sample.stats if sample is not None else {}
        grid = sample.grid if sample is not None else None
        body = {
            "model": self.model,
            "interval": self.interval,
            "disk_mb_s": self.disk_mb_s,
            "settings": settings(stats, self.limits),
            "budget": budget_parts(stats),
            "memory": _memory(sample) if sample is not None else None,
            "layers": int(grid.shape[0]) if grid is not None else 0,
            "experts": int(grid.shape[1]) if grid is not None else 0,
            "heat": _b64(grid) if grid is not None else None,
            "history": list(self.history),
            # ended requests, also those the next tick will announce (a page skips ids it has)
            "requests": [*self.finished, *self._pending_requests()],
            "waiting": self.worker.waiting,
            "running": self.worker.running,
        }
        return _event("hello", body)


def rates(before: Sample, after: Sample) -> dict[str, float | None]:
    """What happened between two samples; None where it cannot be told (nothing happened, or a
    counter went back: stats were reset)."""
    tokens = after.tokens - before.tokens
    decode_tokens = after.decode_tokens - before.decode_tokens
    decode_s = after.decode_s - before.decode_s
    hits, misses = after.hits - before.hits, after.misses - before.misses
    read = after.bytes_read - before.bytes_read
    read_s = after.read_seconds - before.read_seconds
    if min(tokens, hits, misses, read) < 0 or read_s < 0:
        return {"tok_s": None, "hit_rate": None, "mb_per_token": None, "read_mb_s": None}
    return {
        "tok_s": _round(decode_tokens / decode_s) if decode_s > 0 else None,
        "hit_rate": _round(hits / (hits + misses)) if hits + misses else None,
        "mb_per_token": _round(read / 1e6 / tokens) if tokens else None,
        "read_mb_s": _round(read / 1e6 / read_s) if read_s > 0 else None,
    }


def heat_grid(before: Sample | None, samples: list[Sample]) -> np.ndarray | None:
    """The newest of `samples`' grids with the experts read and evicted since `before` flagged,
    or None when nothing changed. The flags come from the handle's observer where it watched
    (every read and eviction), else from the difference between the two grids."""
    after = samples[-1]
    if after.grid is None:
        return None
    if any(s.activity is not None for s in samples):
        flags = np.zeros_like(after.grid)
        for s in samples:
            if s.activity is not None and s.activity.shape == flags.shape:
                flags |= s.activity
        old = before.grid if before is not None else None
        if not flags.any() and old is not None and np.array_equal(old, after.grid):
            return None
        return np.where(after.grid == PAD, PAD, after.grid | flags).astype(np.uint8)
    return changed_grid(before, after)


def changed_grid(before: Sample | None, after: Sample) -> np.ndarray | None:
    """`after`'s grid with the experts read and evicted since `before` flagged, or None when no
    cell changed. An expert read and evicted again between the two samples is not seen."""
    grid = after.grid
    if grid is None:
        return None
    old = before.grid if before is not None else None
    if old is None or old.shape != grid.shape:
        return grid
    if np.array_equal(old, grid):
        return None
    was, now = (old & RESIDENT).astype(bool), (grid & RESIDENT).astype(bool)
    out = grid.copy()
    out[now & ~was] |= READ
    out[was & ~now] |= EVICTED
    return out


def settings(stats: dict, limits: dict) -> dict:
    """The settings a page shows beside the model's name."""
    budget = stats.get("budget") or {}
    kv = stats.get("kv") or {}
    layers = stats.get("layers") or []
    return {
        "backend": budget.get("backend"),
        "policy": stats.get("policy"),
        "miss": stats.get("miss"),
        "lossy": stats.get("lossy"),
        "packed": stats.get("packed"),
        "lookahead": stats.get("lookahead"),
        "capacity": [layer.get("capacity") for layer in layers],
        "num_experts": [layer.get("num_experts") for layer in layers],
        "kv_bits": kv.get("kv_bits"),
        "max_context": kv.get("max_context"),
        **limits,
    }


def budget_parts(stats: dict) -> dict | None:
    """The memory budget as the plan split it, and its reason in words."""
    budget = stats.get("budget")
    if not budget:
        return None
    slots = sum(c * b for c, b in zip(budget["capacity"], budget["expert_bytes"], strict=True))
    # The plan's reserve holds the KV cache and the prompt caches kept for other conversations.
    reserve = budget.get("reserve_bytes", 0)
    prompts = ((stats.get("session") or {}).get("prompt_cache") or {}).get("memory_limit", 0)
    return {
        "memory": budget.get("memory"),
        "reason": budget.get("reason"),
        "parts": [
            {"name": "process", "bytes": budget.get("base_bytes", 0)},
            {"name": "weights", "bytes": budget.get("dense_bytes", 0)},
            {"name": "expert slots", "bytes": slots},
            {"name": "KV cache", "bytes": reserve - prompts},
            {"name": "prompt caches", "bytes": prompts},
            {"name": "scratch", "bytes": budget.get("scratch_bytes", 0)},
        ],
    }


def _memory(sample: Sample) -> dict:
    return {"process": sample.process_memory, "peak": sample.peak_memory}


def _round(x: float) -> float:
    return round(float(x), 4)


def _b64(grid: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(grid, dtype=np.uint8).tobytes()).decode()


def _event(name: str, body: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def _push(page: asyncio.Queue, frame: str | None) -> None:
    """Queue a frame; a page that fell `BACKLOG` frames behind is ended (it reconnects and gets a
    fresh `hello`), since a dropped grid frame would leave its heatmap wrong."""
    if frame is not None and page.full():
        while not page.empty():
            page.get_nowait()
        frame = None
    with contextlib.suppress(asyncio.QueueFull):
        page.put_nowait(frame)


async def live_events(request: Request) -> Response:
    feed: LiveFeed = request.app.state.live
    return StreamingResponse(
        _stream(feed),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _stream(feed: LiveFeed) -> AsyncIterator[str]:
    page = feed.subscribe()
    try:
        yield feed.hello()
        while True:
            try:
                frame = await asyncio.wait_for(page.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if frame is None:
                return
            yield frame
    finally:
        feed.unsubscribe(page)
