"""OpenAI legacy text completions: /v1/completions (raw prompt, no template, `logprobs: n`)."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import KEEPALIVE_S, Engine, Idle
from ._openai import (
    FINISH,
    KEEPALIVE_COMMENT,
    _sse,
    _start,
    _usage,
    failure_event,
    failure_response,
)
from ._openai_options import Options
from ._worker import Failure, Finish, TokenLogprob


def _completion_logprobs(items: list[TokenLogprob], offset: int) -> dict:
    """Completions' legacy logprobs shape: parallel lists, one entry per token."""
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    return {
        "tokens": [i.token for i in items],
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [dict(i.top) for i in items],
        "text_offset": offsets,
    }


async def completions(request: Request) -> Response:
    options, job = await _start(request, chat=False)
    if options is None:
        return job
    engine: Engine = request.app.state.engine
    meta = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": options.model,
    }
    if options.stream:
        return StreamingResponse(
            _completion_stream(engine, job, options, meta), media_type="text/event-stream"
        )
    text, logprobs = [], []
    async for event in engine.events(job, request):
        if isinstance(event, str):
            text.append(event)
        elif isinstance(event, TokenLogprob):
            logprobs.append(event)
        elif isinstance(event, Failure):
            return failure_response(event)
        elif isinstance(event, Finish):
            finish = event
    return JSONResponse(
        {
            **meta,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(text),
                    "logprobs": (
                        _completion_logprobs(logprobs, 0) if options.logprobs is not None else None
                    ),
                    "finish_reason": FINISH[finish.reason],
                }
            ],
            "usage": _usage(finish),
        }
    )


async def _completion_stream(engine: Engine, job, options: Options, meta: dict):
    pending: list[TokenLogprob] = []
    offset = 0

    def chunk(text: str, finish_reason=None) -> str:
        nonlocal offset
        logprobs = None
        if options.logprobs is not None and (pending or finish_reason):
            logprobs = _completion_logprobs(pending, offset)
            offset += sum(len(p.token) for p in pending)
            pending.clear()
        return _sse(
            {
                **meta,
                "choices": [
                    {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
                ],
            }
        )

    async for event in engine.events(job, keepalive=KEEPALIVE_S):
        if isinstance(event, Idle):
            yield KEEPALIVE_COMMENT
        elif isinstance(event, TokenLogprob):
            pending.append(event)
        elif isinstance(event, str):
            yield chunk(event)
        elif isinstance(event, Failure):
            if error := failure_event(event):
                yield error
            return
        elif isinstance(event, Finish):
            yield chunk("", FINISH[event.reason])
            if options.include_usage:
                yield _sse({**meta, "choices": [], "usage": _usage(event)})
    yield _sse("[DONE]")
