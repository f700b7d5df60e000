"""Serving a model split across hosts: rank 0 takes the requests, every other rank follows.

Every rank holds a `Session` on its stage of the model (`Session(..., group=...)`) and runs the
same `stream` calls in the same order, so their caches, expert caches and random states stay
alike: rank 0 shares each request with the followers over MLX's ring (`_ring`).

`Leader` is rank 0's side and a provider for moe-server: one thread of its own owns MLX, so a
request can fail with `GroupUnavailable` (a rank gone, still loading, failed) while that thread
is stuck in a collective that will never complete. `follow` is the other ranks' side. Which
ranks are alive comes from `_control`, beside the ring.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from moe_core import MoEError

from ._control import BEAT_S, TIMEOUT_S, ControlClient, ControlServer, Topology
from ._pipeline import barrier
from ._resolve import resolve_model
from ._ring import CLOSE, END, NEXT, SHARED, run_stream, share, summary

log = logging.getLogger("moe_runtime")

_POLL_S = 0.2


class GroupUnavailable(MoEError):
    """The distributed group cannot serve: a rank is gone, failed, or not ready yet."""


@dataclass(slots=True)
class _Request:
    seq: int
    tokens: list[int]
    kwargs: dict
    cancelled: Callable[[], bool]
    steps: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)


class Leader:
    """Rank 0 of a distributed launch: a provider (`stream`, `encode_prompt`, `stats`, `health`)
    whose model is split over every rank. Loading starts at once, in its own thread;
    `health()` and `GroupUnavailable` say what it waits for."""

    def __init__(
        self,
        model: str | Path | None,
        *,
        topology: Topology | None = None,
        beat_s: float = BEAT_S,
        timeout_s: float = TIMEOUT_S,
        **session_kwargs,
    ) -> None:
        self.topology = topology or Topology.from_env()
        self.model_id, self.model_path = resolve_model(model)
        self.control = ControlServer(self.topology, beat_s=beat_s, timeout_s=timeout_s)
        self.session: Any = None  # the Session, once the model's thread has loaded it
        self.state, self.since = "loading", time.time()
        self.reason: str | None = None
        self._own: dict = {}
        self._full: dict = {}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._seq = 0
        self._thread = threading.Thread(
            target=self._run, args=(session_kwargs,), name="moe-rank0", daemon=True
        )
        self._thread.start()

    # -- the model's thread -----------------------------------------------------------------

    def _run(self, session_kwargs: dict) -> None:
        from ._session import Session

        self.control.started.wait()
        try:
            group = mx.distributed.init(strict=True, backend="ring")
            self.session = Session(self.model_path, group=group, **session_kwargs)
            self._refresh()
            self._set("ready", None)
        except Exception as e:
            log.exception("rank 0 could not start")
            self._set("failed", f"rank 0 could not start: {type(e).__name__}: {e}")
            return
        request: _Request | None = None
        try:
            while (request := self._requests.get()) is not None:
                shared = {"seq": request.seq, "tokens": request.tokens, "kwargs": request.kwargs}
                share(group, {"op": "stream", **shared})

                def advance(r: _Request = request) -> bool:
                    return r.steps.get() == NEXT

                try:
                    run_stream(
                        group,
                        self.session,
                        shared,
                        advance,
                        request.out.put,
                        request.cancelled,
                    )
                    self._refresh(request.seq)
                finally:
                    request.done.set()
            share(group, {"op": "stop"})
            barrier(group)
            self.session.close()
            self._set("stopped", None)
            # MLX's ring group aborts the process when it is destroyed at exit by a thread
            # other than the one that made it: let it go here, with the session that holds it.
            self.session = None
            del group
            gc.collect()
        except Exception as e:  # a collective failed: a peer is gone
            log.exception("rank 0 lost the group")
            self._set("failed", f"the group broke: {type(e).__name__}: {e}")
            if request is not None:
                request.out.put(e)

    def _refresh(self, seq: int = 0) -> None:
        self._full = self.session.stats()
        self._own = summary(self.session, seq)

    def _set(self, state: str, reason: str | None) -> None:
        self.state, self.reason, self.since = state, reason, time.time()

    # -- the provider -----------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.session.tokenizer if self.session is not None else None

    @property
    def max_context(self) -> int | None:
        return self.session.kv.max_context if self.session is not None else None

    def problem(self) -> str | None:
        """Why requests cannot run now, or None."""
        if self.state == "stopped":
            return "the server is stopping"
        problems = [self.control.problem()]
        if self.state == "failed":
            problems.insert(0, self.reason)
        elif self.state == "loading":
            problems.append(f"rank 0 is still loading the model ({time.time() - self.since:.0f} s)")
        return "; ".join(p for p in problems if p) or None

    def _check(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise GroupUnavailable(problem)

    def encode_prompt(self, prompt, tools=None, **kwargs) -> list[int]:
        self._check()
        return self.session.encode_prompt(prompt, tools=tools, **kwargs)

    def stream(self, prompt, **kwargs) -> Iterator:
        self._check()
        cancelled = kwargs.pop("cancelled", None) or (lambda: False)
        tokens = self.encode_prompt(
            prompt,
            tools=kwargs.pop("tools", None),
            chat_template_kwargs=kwargs.pop("chat_template_kwargs", None),
        )
        unknown = set(kwargs) - SHARED
        if unknown:  # e.g. a grammar's logits processor: every rank samples, only rank 0 has it
            raise ValueError(
                f"{', '.join(sorted(unknown))}: not available on a model split across hosts"
            )
        self._seq += 1
        request = _Request(self._seq, tokens, kwargs, cancelled)
        self._requests.put(request)
        return self._responses(request)

    def _responses(self, request: _Request) -> Iterator:
        ended = False
        try:
            while True:
                request.steps.put(NEXT)
                item = self._wait(request)
                if item is END or item == CLOSE:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item
        finally:
            if not ended:
                request.steps.put(CLOSE)
            # The ranks finish the request (a few collectives) before the next one starts, and
            # report their figures for it, so stats() after a request counts every rank's part.
            while not request.done.wait(_POLL_S) and self.control.problem() is None:
                pass
            self.control.wait_stats(request.seq, timeout=2 * self.control.beat_s)

    def _wait(self, request: _Request):
        """The next item from the model's thread; GroupUnavailable as soon as a rank is gone."""
        while True:
            try:
                item = request.out.get(timeout=_POLL_S)
            except queue.Empty:
                item = None
            problem = self.control.problem()
            if isinstance(item, RuntimeError) and problem is None:
                # The ring failed; the control channel names the rank within a beat or two.
                deadline = time.monotonic() + 3 * self.control.beat_s
                while problem is None and time.monotonic() < deadline:
                    time.sleep(_POLL_S)
                    problem = self.control.problem()
            if problem is not None:
                self._set("failed", problem)
                raise GroupUnavailable(problem)
            if item is not None:
                return item

    def stats(self, *, window: bool = True) -> dict:
        """Rank 0's session statistics; hits, misses and bytes read summed over every rank;
        `ranks` lists each rank's own figures (a follower's as of its last request). Taken
        after each request, so `window` changes nothing here."""
        stats = dict(self._full)
        ranks = self.ranks()
        counted = [r for r in ranks if "hits" in r]
        if counted:
            hits = sum(r["hits"] for r in counted)
            misses = sum(r["misses"] for r in counted)
            stats.update(
                hits=hits,
                misses=misses,
                hit_rate=hits / (hits + misses) if hits + misses else 0.0,
                bytes_read=sum(r["bytes_read"] for r in counted),
            )
        stats["ranks"] = ranks
        return stats

    def ranks(self) -> list[dict]:
        own = {
            "rank": 0,
            "address": self.topology.addresses[0],
            "state": self.state,
            "for_s": round(time.time() - self.since, 1),
            "reason": self.reason,
            **self._own,
        }
        return [own, *self.control.snapshot()]

    def health(self) -> dict:
        """`status` ok, starting (loading or waiting for ranks) or degraded, and every rank."""
        problem = self.problem()
        if problem is None:
            status = "ok"
        elif self.state == "failed" or any(
            r["state"] in ("gone", "failed") for r in self.control.snapshot()
        ):
            status = "degraded"
        else:
            status = "starting"
        return {"status": status, "reason": problem, "ranks": self.ranks()}

    def close(self, timeout: float = 30.0) -> bool:
        """Stop every rank; True when they stopped together, False when the group was broken
        (the followers then stop as their connection to rank 0 closes)."""
        clean = False
        self.control.stopping = True  # followers that now exit have stopped, not gone
        if self.state == "ready" and self.control.problem() is None:
            self._requests.put(None)
            self._thread.join(timeout)
            clean = self.state == "stopped"
        self.control.close()
        return clean


def follow(
    model: str | Path | None,
    *,
    topology: Topology | None = None,
    beat_s: float = BEAT_S,
    timeout_s: float = TIMEOUT_S,
    **session_kwargs,
) -> int:
    """Run a follower rank until rank 0 stops it; returns the exit code (0 when stopped, 1 when
    this rank failed).

    When rank 0 goes away or cannot be reached, the process ends at once (its model thread may
    be stuck in a collective), also with exit code 0: under mlx.launch a non-zero exit ends
    every rank, and a follower cut off from rank 0 must not take down a rank 0 that still
    answers, and reports this rank gone."""
    from ._session import Session

    topology = topology or Topology.from_env()
    stopping = threading.Event()

    def lost(reason: str) -> None:
        if stopping.is_set():  # rank 0 closes the connection once it has stopped everyone
            return
        print(f"moe: rank {topology.rank}: {reason}; stopping", file=sys.stderr, flush=True)
        os._exit(0)

    control = ControlClient(topology, lost, beat_s=beat_s, timeout_s=timeout_s)
    control.go.wait()
    try:
        group = mx.distributed.init(strict=True, backend="ring")
        _, path = resolve_model(model)
        session = Session(path, group=group, **session_kwargs)
        control.send(state="ready", stats=summary(session))
        control.ready = True
        while (request := share(group, None))["op"] == "stream":
            run_stream(group, session, request, lambda: False, lambda _: None, lambda: False)
            control.send(stats=summary(session, request["seq"]))
        stopping.set()
        barrier(group)
    except Exception as e:
        log.exception("rank %d failed", topology.rank)
        control.send(state="failed", reason=f"{type(e).__name__}: {e}")
        control.closed.wait()  # rank 0 reports it until it stops
        return 1
    session.close()
    return 0
