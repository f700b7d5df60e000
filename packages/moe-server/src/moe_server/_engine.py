"""What both APIs share: limits, request errors, and running one generation through the worker."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ._metrics import Metrics
from ._provider import Provider
from ._reasoning import opens_thinking, splitter_for
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
    too_deep = RequestError(f"request body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(body, parse_constant=_not_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from None
    except RecursionError:  # Python's parser gives up near its recursion limit
        raise too_deep from None
    if _depth(data) > MAX_DEPTH:
        raise too_deep
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    return data


def _not_json(name: str) -> None:
    """Python's parser takes NaN and Infinity, which JSON has not (and answers could not echo)."""
    raise RequestError(f"request body is not valid JSON: {name} is not a JSON number")


# Deeper than any real request (a tool's JSON schema) and far from Python's recursion limit, which
# the chat template's rendering and `json.dumps` would reach.
MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend(
                    (child, depth + 1)
                    for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


class Engine:
    """Runs generations for the API endpoints: counts the prompt, queues, yields events."""

    def __init__(self, provider: Provider, limits: Limits):
        self.provider = provider
        self.limits = limits
        self.worker = Worker(provider, max_queue=limits.max_queue)
        self.metrics = Metrics()
        self.created = int(time.time())
        self._lltok = None  # llguidance's tokenizer, built on the first constrained request

    @functools.cached_property
    def vocab_size(self) -> int:
        return len(self.provider.tokenizer.get_vocab())

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

    async def encode(
        self, prompt: Any, tools: list[dict] | None, template: dict | None = None
    ) -> list[int]:
        """The prompt's token ids, exactly as the provider will render it."""
        kwargs = {"chat_template_kwargs": template} if template else {}
        try:
            return await run_in_threadpool(self.provider.encode_prompt, prompt, tools, **kwargs)
        except Exception as e:  # a template that rejects the messages is the request's fault
            raise RequestError(f"the chat template could not render these messages: {e}") from None

    async def count_tokens(
        self, prompt: Any, tools: list[dict] | None, template: dict | None = None
    ) -> int:
        return len(await self.encode(prompt, tools, template))

    def context_length(self) -> int:
        """The longest prompt this server takes: its own limit, or the model's if smaller."""
        model_limit = getattr(getattr(self.provider, "kv", None), "max_context", None)
        if isinstance(model_limit, int) and model_limit > 0:
            return min(model_limit, self.limits.max_input_tokens)
        return self.limits.max_input_tokens

    async def grammar(
        self,
        kind: str,
        *,
        param: str,
        schema: dict | None = None,
        name: str | None = None,
        tools: list[dict] | None = None,
    ) -> str:
        """A checked grammar for constrained decoding: kind "json" (`schema`, or any object) or
        "tool" (one call of `name`, or of any of `tools`)."""
        from . import _structured  # llguidance loads on the first constrained request

        if self._lltok is None:
            self._lltok = await run_in_threadpool(_structured.ll_tokenizer, self.provider.tokenizer)
        if kind == "tool":
            grammar = _structured.tool_call_grammar(self.provider.tokenizer, tools or [], name)
        else:
            try:
                grammar = _structured.json_grammar(schema)
            except ValueError as e:
                raise RequestError(
                    f"'{param}' is not a usable JSON schema: {e}", param=param
                ) from None
        await run_in_threadpool(_structured.check, grammar, self._lltok, param)
        return grammar

    async def constraint(
        self, output: tuple[str, dict | None] | None, tools, forced: str | None, *, param: str
    ) -> str | None:
        """The grammar a request's output must follow: a forced tool call (`forced` "" for any
        tool, else a name), a JSON format (`output` ("json", schema or None)), or none."""
        if forced is not None:
            if output is not None:
                raise RequestError(
                    f"'{param}' and a forced tool_choice cannot both apply", param=param
                )
            return await self.grammar("tool", tools=tools, name=forced or None, param="tool_choice")
        if output is not None:
            return await self.grammar("json", schema=output[1], param=param)
        return None

    def _processor(self, grammar: str, prompt_ids: list[int], template: dict) -> Any:
        from . import _structured

        tokenizer = self.provider.tokenizer
        thinks = getattr(tokenizer, "has_thinking", False)
        thinks = thinks and template.get("enable_thinking") is not False
        marks = {}
        for name in ("think_start_id", "think_end_id"):
            try:
                marks[name] = getattr(tokenizer, name) if thinks else None
            except ValueError:  # a marker of several tokens: no thinking under a grammar
                marks[name] = None
        return _structured.GrammarProcessor(
            self._lltok,
            grammar,
            think_start=marks["think_start_id"],
            think_end=marks["think_end_id"],
            thinking=thinks and opens_thinking(tokenizer, prompt_ids),
        )

    async def submit(
        self,
        prompt: Any,
        *,
        tools: list[dict] | None,
        stops: list[str],
        sampling: dict,
        template: dict | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
    ) -> Job:
        """Check the prompt length and queue the generation (raises Overloaded when full).

        `template`: chat template keyword arguments (enable_thinking), None for a raw
        completion whose text is not split into reasoning and answer; `grammar`: from
        `grammar()`, constrains the output; `logprobs`: None for none, else how many of the
        most likely tokens to report beside each chosen one."""
        scanner = self.tool_scanner(tools)
        chat = template is not None  # raw completions keep every character, markers too
        template = template or {}
        ids = await self.encode(prompt, tools, template)
        prompt_tokens = len(ids)
        if prompt_tokens > self.limits.max_input_tokens:
            raise RequestError(
                f"the prompt is {prompt_tokens} tokens; this server accepts at most "
                f"{self.limits.max_input_tokens}",
                param="messages",
                code="context_length_exceeded",
            )
        if sampling.get("top_k", 0) >= self.vocab_size:  # mlx-lm refuses it; it keeps every token
            sampling = {**sampling, "top_k": 0}
        if tools:
            sampling = {**sampling, "tools": tools}
        if template:
            sampling = {**sampling, "chat_template_kwargs": template}
        if grammar is not None:
            processor = await run_in_threadpool(self._processor, grammar, ids, template)
            sampling = {**sampling, "logits_processors": [processor]}
        job = Job(
            prompt=prompt,
            sampling=sampling,
            stops=stops,
            tools=scanner,
            reasoning=splitter_for(self.provider.tokenizer if chat else None, ids),
            logprobs=logprobs,
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
