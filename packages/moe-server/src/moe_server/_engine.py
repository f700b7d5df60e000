"""What the APIs share: limits, and running one generation through the worker."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ._metrics import Metrics
from ._provider import Provider
from ._reasoning import opens_thinking, splitter_for
from ._request import ContextTooLong, RequestError
from ._text import ToolScanner
from ._worker import Failure, Finish, Job, Worker


@dataclass(slots=True, frozen=True)
class Limits:
    """The server's own limits; the context limit is the provider's (`max_context`)."""

    max_queue: int = 8
    max_tokens_default: int = 512
    max_body_bytes: int = 4 * 1024 * 1024
    batch: int = 1  # requests decoded together, at most (where the provider can batch)

    def __post_init__(self):
        for name in ("max_tokens_default", "max_body_bytes", "batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be a non-negative integer, got {self.max_queue!r}")


class Engine:
    """Runs generations for the API endpoints: counts the prompt, queues, yields events."""

    def __init__(self, provider: Provider, limits: Limits):
        self.provider = provider
        self.limits = limits
        self.worker = Worker(provider, max_queue=limits.max_queue, batch=limits.batch)
        self.metrics = Metrics()
        self.created = int(time.time())
        self._lltok: Any = None  # llguidance's tokenizer, built on the first constrained request

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

    def check_available(self) -> None:
        """A provider with `health()` (a model split across hosts) may be unable to serve: a
        host gone, still loading. Refuse at once, saying why, rather than queue."""
        health = getattr(self.provider, "health", None)
        state = health() if health is not None else None
        if state is not None and state["status"] != "ok":
            raise RequestError(
                f"the model cannot serve now: {state['reason']}",
                status=503,
                kind="api_error",
                code="unavailable",
            )

    async def encode(
        self, prompt: Any, tools: list[dict] | None, template: dict | None = None
    ) -> list[int]:
        """The prompt's token ids, exactly as the provider will render it."""
        self.check_available()
        kwargs = {"chat_template_kwargs": template} if template else {}
        try:
            return await run_in_threadpool(self.provider.encode_prompt, prompt, tools, **kwargs)
        except Exception as e:  # a template that rejects the messages is the request's fault
            raise RequestError(f"the chat template could not render these messages: {e}") from None

    async def count_tokens(
        self, prompt: Any, tools: list[dict] | None, template: dict | None = None
    ) -> int:
        return len(await self.encode(prompt, tools, template))

    def context_length(self) -> int | None:
        """The one context limit, prompt and answer together: the provider's `max_context`
        (the session's, from the model's positions and the memory budget), or None when the
        provider sets none."""
        limit = getattr(self.provider, "max_context", None)
        return limit if isinstance(limit, int) and limit > 0 else None

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
        field: str = "messages",
    ) -> Job:
        """Check the prompt length and queue the generation (raises Overloaded when full).

        `template`: chat template keyword arguments (enable_thinking), None for a raw
        completion whose text is not split into reasoning and answer; `grammar`: from
        `grammar()`, constrains the output; `logprobs`: None for none, else how many of the
        most likely tokens to report beside each chosen one; `field`: the request field that
        holds the prompt, named by a prompt too long for the context."""
        self.check_available()
        scanner = self.tool_scanner(tools)
        chat = template is not None  # raw completions keep every character, markers too
        template = template or {}
        ids = await self.encode(prompt, tools, template)
        prompt_tokens = len(ids)
        limit = self.context_length()
        if limit is not None and prompt_tokens >= limit:  # no room for one token of answer
            raise ContextTooLong(prompt_tokens, limit, param=field)
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

    async def events(
        self, job: Job, request: Request | None = None, *, keepalive: float | None = None
    ) -> AsyncIterator[Any]:
        """The job's text pieces and tool calls, ending with a Finish or a Failure.

        With `keepalive`, a stream also gets an `Idle` whenever that many seconds pass without
        an event (a long prefill of an agent's prompt on a CPU takes minutes): each API sends
        something its clients ignore, so neither they nor a proxy take the stream for dead.

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
                try:
                    event = await asyncio.wait_for(job.events.get(), keepalive)
                except TimeoutError:
                    yield IDLE
                    continue
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
KEEPALIVE_S = 10.0  # Anthropic's own API pings a stream about this often


class Idle:
    """No event for KEEPALIVE_S seconds."""


IDLE = Idle()


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Set the job's cancel flag (which the worker checks between tokens) once the client of a
    non-streaming request has disconnected."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)
