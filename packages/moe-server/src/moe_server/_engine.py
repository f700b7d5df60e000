"""What both APIs share: limits, request errors, and running one generation through the worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ._metrics import Metrics
from ._provider import Provider
from ._text import ToolScanner
from ._worker import Failure, Finish, Job, Worker


@dataclass(slots=True, frozen=True)
class Limits:
    max_queue: int = 8
    max_input_tokens: int = 32768
    max_tokens_default: int = 512
    max_body_bytes: int = 4 * 1024 * 1024

    def __post_init__(self):
        for name in ("max_input_tokens", "max_tokens_default", "max_body_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be a non-negative integer, got {self.max_queue!r}")


class RequestError(Exception):
    """A request the server will not run; each API renders it in its own error shape."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = (
            message,
            param,
            status,
            kind,
            code,
        )


async def read_json(request: Request, limit: int) -> dict:
    """The request body as a JSON object, refusing bodies over `limit` bytes before reading them."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(
            f"request body is {length} bytes; the limit is {limit}",
            status=413,
            kind="request_too_large",
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(
                f"request body exceeds the limit of {limit} bytes",
                status=413,
                kind="request_too_large",
            )
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    return data


class Engine:
    """Runs generations for the API endpoints: counts the prompt, queues, yields events."""

    def __init__(self, provider: Provider, limits: Limits):
        self.provider = provider
        self.limits = limits
        self.worker = Worker(provider, max_queue=limits.max_queue)
        self.metrics = Metrics()
        self.created = int(time.time())

    def tool_scanner(self, tools: list[dict] | None) -> ToolScanner:
        """A scanner for tool calls, or a pass-through when the request offers no tools."""
        if not tools:
            return ToolScanner()
        tokenizer = self.provider.tokenizer
        if not getattr(tokenizer, "has_tool_calling", False):
            raise RequestError(
                f"the loaded model {self.provider.model_id} has no tool-calling chat template",
                param="tools",
            )
        return ToolScanner(
            start=tokenizer.tool_call_start,
            end=tokenizer.tool_call_end,
            parser=tokenizer.tool_parser,
            tools=tools,
        )

    async def count_tokens(self, prompt: Any, tools: list[dict] | None) -> int:
        try:
            ids = await run_in_threadpool(self.provider.encode_prompt, prompt, tools)
        except Exception as e:  # a template that rejects the messages is the request's fault
            raise RequestError(f"the chat template could not render these messages: {e}") from None
        return len(ids)

    async def submit(
        self, prompt: Any, *, tools: list[dict] | None, stops: list[str], sampling: dict
    ) -> Job:
        """Check the prompt length and queue the generation (raises Overloaded when full)."""
        scanner = self.tool_scanner(tools)
        prompt_tokens = await self.count_tokens(prompt, tools)
        if prompt_tokens > self.limits.max_input_tokens:
            raise RequestError(
                f"the prompt is {prompt_tokens} tokens; this server accepts at most "
                f"{self.limits.max_input_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        if tools:
            sampling = {**sampling, "tools": tools}
        job = Job(
            prompt=prompt,
            sampling=sampling,
            stops=stops,
            tools=scanner,
            prompt_tokens=prompt_tokens,
            loop=asyncio.get_running_loop(),
        )
        return self.worker.submit(job)

    async def events(self, job: Job, request: Request | None = None) -> AsyncIterator[Any]:
        """The job's text pieces and tool calls, ending with a Finish or a Failure.

        Leaving early (a streaming client that disconnects) cancels the generation in the
        worker. A non-streaming endpoint writes nothing until the end, so it passes its
        `request`: a client that goes away meanwhile is noticed by polling and cancels too.
        """
        done = False
        watcher = None
        if request is not None:
            watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, Finish):
                    done = True
                    self.metrics.generation(event)
                elif isinstance(event, Failure):
                    done = True
                yield event
                if done:
                    return
        finally:
            if watcher is not None:
                watcher.cancel()
            if not done:
                job.cancel()


DISCONNECT_POLL_S = 0.1


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Set the job's cancel flag (which the worker checks between tokens) once the client of a
    non-streaming request has disconnected."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)
