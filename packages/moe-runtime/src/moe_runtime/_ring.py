"""What rank 0 and its followers say over MLX's ring for each request of a model split across
hosts, as mlx-lm's server does: rank 0 shares the request (an `all_sum` in which only rank 0's
bytes are not zero), every rank runs the same `stream` call, and one flag per token says whether
the next one is wanted, so a client that stops reading stops every rank at the same token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from typing import cast

import mlx.core as mx

from ._stream import Sampling

NEXT, CLOSE, END = "next", "close", "end"
# `Session.stream` arguments that can be sent to the other ranks: all but the logits
# processors (callables cannot be).
SHARED = {"max_tokens", "seed", "stop", *(f.name for f in fields(Sampling))} - {"logits_processors"}


def share(group: mx.distributed.Group, obj: dict | None) -> dict:
    """Rank 0's `obj` on every rank (the others pass None)."""
    if group.rank() == 0:
        data = mx.array(list(json.dumps(obj).encode()), dtype=mx.uint8)
        mx.eval(mx.distributed.all_sum(mx.array(data.size), group=group, stream=mx.cpu))
        mx.eval(mx.distributed.all_sum(data, group=group, stream=mx.cpu))
        assert obj is not None, "rank 0 shares a dict"
        return obj
    size = cast(int, mx.distributed.all_sum(mx.array(0), group=group, stream=mx.cpu).item())
    data = mx.distributed.all_sum(mx.zeros(size, dtype=mx.uint8), group=group, stream=mx.cpu)
    # mlx's stubs do not declare the buffer protocol its arrays have.
    return json.loads(bytes(memoryview(data)))  # type: ignore[arg-type]


def flag(group: mx.distributed.Group, value: bool) -> bool:
    """Rank 0's yes or no on every rank."""
    value = value if group.rank() == 0 else False
    return bool(mx.distributed.all_sum(mx.array(int(value)), group=group, stream=mx.cpu).item())


def summary(session, seq: int = 0) -> dict:
    """One rank's figures for /health and /metrics, after request `seq` (none of them needs the
    Belady window, whose replay would run on every rank after every request)."""
    stats = session.stats(window=False)
    budget = stats.get("budget") or {}
    return {
        "seq": seq,
        "layers": (stats.get("pipeline") or {}).get("layers"),
        "process_memory": stats["session"]["process_memory"],
        "peak_memory": stats.get("peak_memory"),
        "budget_memory": budget.get("memory"),
        "capacity": list(budget.get("capacity") or ()),
        "hits": stats["hits"],
        "misses": stats["misses"],
        "hit_rate": stats["hit_rate"],
        "bytes_read": stats["bytes_read"],
        "generated_tokens": stats["session"]["generated_tokens"],
    }


def run_stream(group, session, request: dict, want: Callable[[], bool], emit, cancelled) -> None:
    """One request on one rank; `want()` (rank 0's decision) is asked before every token."""
    kwargs = dict(request["kwargs"])
    if kwargs.get("logit_bias"):  # JSON keys are strings
        kwargs["logit_bias"] = {int(k): v for k, v in kwargs["logit_bias"].items()}
    try:
        responses = session.stream(
            request["tokens"], cancelled=lambda: flag(group, cancelled()), **kwargs
        )
    except ValueError as e:  # the same arguments fail alike on every rank
        emit(e)
        return
    try:
        while flag(group, want()):
            try:
                emit(next(responses))
            except StopIteration:
                emit(END)
                return
        emit(CLOSE)
    finally:
        responses.close()
