"""OpenAI legacy text completions: /v1/completions (raw prompt, no template, `logprobs: n`)."""

from __future__ import annotations

import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import Engine
from ._openai import _start
from ._openai_bodies import FINISH, answer, completion_body, failure_response, sse, stream
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
    meta = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": options.model}
    if options.stream:
        events = stream(
            engine,
            job,
            meta=meta,
            kind="text_completion",
            include_usage=options.include_usage,
            render=_TextChunks(meta, options),
        )
        return StreamingResponse(events, media_type="text/event-stream")
    result = await answer(engine, job, request)
    if isinstance(result, Failure):
        return failure_response(result)
    logprobs = None
    if options.logprobs is not None:
        logprobs = _completion_logprobs(result.logprobs, 0)
    choice = {"text": result.text, "logprobs": logprobs}
    return JSONResponse(completion_body(meta, "text_completion", choice, result.finish))


class _TextChunks:
    """A completion stream's chunks; a token's logprobs go out with the chunk of its text."""

    def __init__(self, meta: dict, options: Options):
        self.meta, self.options = meta, options
        self.pending: list[TokenLogprob] = []
        self.offset = 0

    def __call__(self, event) -> list[str]:
        if isinstance(event, TokenLogprob):
            self.pending.append(event)
        elif isinstance(event, str):
            return [self._chunk(event)]
        elif isinstance(event, Finish):
            return [self._chunk("", FINISH[event.reason])]
        return []

    def _chunk(self, text: str, finish_reason=None) -> str:
        logprobs = None
        if self.options.logprobs is not None and (self.pending or finish_reason):
            logprobs = _completion_logprobs(self.pending, self.offset)
            self.offset += sum(len(p.token) for p in self.pending)
            self.pending = []
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse({**self.meta, "object": "text_completion", "choices": [choice]})
