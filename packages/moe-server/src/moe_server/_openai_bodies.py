"""What the OpenAI endpoints send back, in one place: error bodies, a finished completion's body,
and the stream around the chunks (keepalives, the error event, usage, `[DONE]`). Chat
completions and text completions differ only in their choice and their chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ._engine import KEEPALIVE_S, Engine, Idle
from ._reasoning import Reasoning
from ._request import RequestError, retry_headers
from ._text import ToolCall
from ._worker import SHUTDOWN, Failure, Finish, Job, Overloaded, TokenLogprob, Unavailable

FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls"}
# An SSE comment: clients skip it; it only tells them (and proxies) the stream is alive.
KEEPALIVE_COMMENT = ": keepalive\n\n"


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"message": message, "type": kind, "param": param, "code": code}


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(
        {"error": error_body(e.message, e.kind, e.param, e.code)}, status_code=e.status
    )


def unavailable_response(e: Unavailable) -> JSONResponse:
    """A full queue (429, with when a slot should free) or a server shutting down (503)."""
    if isinstance(e, Overloaded):
        message = f"the server is busy: too many requests are queued; {e}"
        body = error_body(message, "rate_limit_error", code="queue_full")
        return JSONResponse({"error": body}, status_code=429, headers=retry_headers(e.retry_after))
    body = error_body(SHUTDOWN, "server_error", code="server_shutting_down")
    return JSONResponse({"error": body}, status_code=503)


def _failure_body(failure: Failure) -> dict:
    if failure.shutdown:
        return error_body(failure.message, "server_error", code="server_shutting_down")
    return error_body(f"generation failed: {failure.message}", "server_error")


def failure_response(failure: Failure) -> JSONResponse:
    """A generation that failed (500) or that the server's shutdown ended (503)."""
    return JSONResponse(
        {"error": _failure_body(failure)}, status_code=503 if failure.shutdown else 500
    )


def failure_event(failure: Failure) -> str | None:
    """The stream's error event; None when the client left (nobody to tell)."""
    if failure.message == "cancelled":
        return None
    return sse({"error": _failure_body(failure)})


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def usage(finish: Finish) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
    }


@dataclass(slots=True)
class Answer:
    """A non-streaming generation's events, gathered."""

    finish: Finish
    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


async def answer(engine: Engine, job: Job, request: Request) -> Answer | Failure:
    """Wait for the whole generation (cancelled if the client leaves meanwhile)."""
    text, reasoning, calls, logprobs = [], [], [], []
    async for event in engine.events(job, request):
        if isinstance(event, str):
            text.append(event)
        elif isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, ToolCall):
            calls.append(event)
        elif isinstance(event, TokenLogprob):
            logprobs.append(event)
        elif isinstance(event, Failure):
            return event
        elif isinstance(event, Finish):
            return Answer(event, "".join(text), "".join(reasoning), calls, logprobs)
    raise RuntimeError("a generation ended without a Finish or a Failure")


def completion_body(meta: dict, kind: str, choice: dict, finish: Finish) -> dict:
    """A finished completion: its one choice, the finish reason and the usage."""
    return {
        **meta,
        "object": kind,
        "choices": [{"index": 0, **choice, "finish_reason": FINISH[finish.reason]}],
        "usage": usage(finish),
    }


async def stream(
    engine: Engine,
    job: Job,
    *,
    meta: dict,
    kind: str,
    include_usage: bool,
    render: Callable[[Any], Iterable[str]],
    start: Iterable[str] = (),
) -> AsyncIterator[str]:
    """An OpenAI event stream: `start` at once, then `render` turns each generation event
    (text, reasoning, a tool call, logprobs, the Finish) into chunks; the rest is the same for
    every endpoint."""
    for chunk in start:
        yield chunk
    async for event in engine.events(job, keepalive=KEEPALIVE_S):
        if isinstance(event, Idle):
            yield KEEPALIVE_COMMENT
            continue
        if isinstance(event, Failure):
            if error := failure_event(event):
                yield error
            return
        for chunk in render(event):
            yield chunk
        if isinstance(event, Finish) and include_usage:
            yield sse({**meta, "object": kind, "choices": [], "usage": usage(event)})
    yield sse("[DONE]")
