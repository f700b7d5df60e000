"""Anthropic Messages API: /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import KEEPALIVE_S, Engine, Idle
from ._reasoning import Reasoning
from ._request import ContextTooLong, RequestError, read_json, retry_headers
from ._text import ToolCall
from ._validate import (
    arguments_object,
    block_type,
    get,
    positive_int,
    sampling,
    string_list,
    template_kwargs,
    text_of,
)
from ._worker import SHUTDOWN, Failure, Finish, Overloaded, Unavailable

STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
# Thinking blocks carry a signature the real API verifies; this server has nothing to sign and
# verifies none, so it sends a fixed one that clients hand back unread.
SIGNATURE = "moe-unsigned"


def error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_response(e: RequestError) -> JSONResponse:
    message = e.anthropic_message if isinstance(e, ContextTooLong) else e.message
    return JSONResponse(error_body(e.kind, message), status_code=e.status)


def unavailable_response(e: Unavailable) -> JSONResponse:
    """A full queue (with when a slot should free) or a server shutting down: Anthropic's 529
    overloaded_error, which its clients retry."""
    if isinstance(e, Overloaded):
        message = f"the server is busy: too many requests are queued; {e}"
        return JSONResponse(
            error_body("overloaded_error", message),
            status_code=529,
            headers=retry_headers(e.retry_after),
        )
    return JSONResponse(error_body("overloaded_error", SHUTDOWN), status_code=529)


def _failure_body(failure: Failure) -> dict:
    if failure.shutdown:
        return error_body("overloaded_error", failure.message)
    return error_body("api_error", f"generation failed: {failure.message}")


def failure_response(failure: Failure) -> JSONResponse:
    """A generation that failed (500) or that the server's shutdown ended (529)."""
    return JSONResponse(_failure_body(failure), status_code=529 if failure.shutdown else 500)


def convert_messages(body: dict) -> list[dict]:
    """Anthropic system + messages into the chat template's format (tool_calls, role "tool").

    System-role messages may stand anywhere in `messages` (Claude Code sends one after the
    first user turn): they stay system messages where they are, which Qwen-style templates
    render in place. Thinking blocks of assistant turns become `reasoning_content`.
    """
    out: list[dict] = []
    system = body.get("system")
    if system is not None:
        system_text = text_of(system, "system")
        if system_text:
            out.append({"role": "system", "content": system_text})
    messages = get(body, "messages", list, required=True)
    if not messages:
        raise RequestError("'messages' must not be empty")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object")
        role = get(message, "role", str, required=True, where=f"{where}.")
        if role not in ("user", "assistant", "system"):
            raise RequestError(
                f"'{where}.role' must be 'user', 'assistant' or 'system', got {role!r}"
            )
        content = message.get("content")
        if role == "system":
            out.append({"role": "system", "content": text_of(content, f"{where}.content")})
            continue
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"'{where}.content' must be a string or a list of blocks")
        texts, calls, thoughts = [], [], []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block_type(block, at)
            if kind == "text":
                texts.append(get(block, "text", str, required=True, where=f"{at}."))
            elif kind == "tool_use" and role == "assistant":
                calls.append(
                    {
                        "id": get(block, "id", str, default="", where=f"{at}."),
                        "type": "function",
                        "function": {
                            "name": get(block, "name", str, required=True, where=f"{at}."),
                            "arguments": arguments_object(block.get("input", {}), f"{at}.input"),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                result = block.get("content", "")
                text = text_of(result, f"{at}.content", allow_null=True)
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": get(block, "tool_use_id", str, default="", where=f"{at}."),
                        "content": text,
                    }
                )
            elif kind == "thinking" and role == "assistant":
                thoughts.append(get(block, "thinking", str, default="", where=f"{at}."))
            elif kind == "redacted_thinking":
                continue  # encrypted by another provider: nothing a local model can read
            else:
                raise RequestError(
                    f"'{at}': block type {kind!r} is not supported in a {role} message"
                )
        if texts or calls or role == "assistant":
            converted: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                converted["tool_calls"] = calls
            if "".join(thoughts):
                converted["reasoning_content"] = "\n".join(t for t in thoughts if t)
            out.append(converted)
    return out


def convert_tools(body: dict) -> tuple[list[dict] | None, str | None]:
    """The tools the template sees and the tool a call is forced of (None: not forced, "":
    any tool). `disable_parallel_tool_use` needs nothing: a forced call is always one call."""
    tools = get(body, "tools", list)
    choice = get(body, "tool_choice", dict, default={"type": "auto"})
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise RequestError(f"'tool_choice.type' must be auto, any, tool or none, got {kind!r}")
    if not tools or kind == "none":
        return None, None
    forced = {"auto": None, "any": ""}.get(kind)
    if kind == "tool":
        forced = get(choice, "name", str, required=True, where="tool_choice.")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise RequestError(f"'{where}': tool type {kind!r} is not supported; only client tools")
        function = {
            "name": get(tool, "name", str, required=True, where=f"{where}."),
            "parameters": get(tool, "input_schema", dict, required=True, where=f"{where}."),
        }
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out, forced


def _thinking(body: dict) -> bool | None:
    """Anthropic's `thinking`: enabled and adaptive turn the template's thinking on, disabled
    off; absent leaves the template's default."""
    config = get(body, "thinking", dict)
    if config is None:
        return None
    kind = config.get("type")
    if kind not in ("enabled", "adaptive", "disabled"):
        raise RequestError(f"'thinking.type' must be enabled, adaptive or disabled, got {kind!r}")
    return kind != "disabled"


def _output_format(body: dict) -> tuple[str, dict | None] | None:
    """Structured outputs: `output_config.format` (or the older `output_format`) of type
    json_schema."""
    config = get(body, "output_config", dict, default={})
    fmt = get(config, "format", dict, where="output_config.")
    where = "output_config.format"
    if fmt is None:
        fmt, where = get(body, "output_format", dict), "output_format"
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema":
        raise RequestError(f"'{where}.type' must be 'json_schema', got {fmt.get('type')!r}")
    return ("json", get(fmt, "schema", dict, required=True, where=f"{where}."))


async def _prepare(engine: Engine, body: dict) -> tuple[list[dict], list | None, dict, Any]:
    """What both /v1/messages and count_tokens derive from a body, so they count the same."""
    get(body, "model", str, required=True)
    get(body, "metadata", dict)  # accepted (user_id); nothing here uses it
    prompt = convert_messages(body)
    tools, forced = convert_tools(body)
    template = template_kwargs(thinking=_thinking(body), extra=None)
    return prompt, tools, template, forced


def _tool_use(call: ToolCall) -> dict:
    arguments = (
        call.arguments if isinstance(call.arguments, dict) else {"arguments": call.arguments}
    )
    return {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": arguments}


async def messages(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        get(body, "model", str, required=True)  # any name: the loaded model answers
        max_tokens = positive_int(body, "max_tokens")
        if max_tokens is None:
            raise RequestError("missing required field 'max_tokens'")
        stream = get(body, "stream", bool, default=False)
        prompt, tools, template, forced = await _prepare(engine, body)
        grammar = await engine.constraint(
            _output_format(body), tools, forced, param="output_config.format"
        )
        job = await engine.submit(
            prompt,
            tools=tools,
            stops=string_list(body, "stop_sequences"),
            # max_tokens beyond the context (Claude Code asks for 32000) ends at the context.
            sampling=sampling(body, max_tokens=max_tokens),
            template=template,
            grammar=grammar,
        )
    except RequestError as e:
        return error_response(e)
    except Unavailable as e:
        return unavailable_response(e)
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": engine.provider.model_id,
    }
    if stream:
        return StreamingResponse(_stream(engine, job, message), media_type="text/event-stream")
    content: list[dict] = []
    async for event in engine.events(job, request):
        if isinstance(event, str | Reasoning):
            kind, field = ("text", "text") if isinstance(event, str) else ("thinking", "thinking")
            text = event if isinstance(event, str) else event.text
            if content and content[-1]["type"] == kind:
                content[-1][field] += text
            else:
                block = {"type": kind, field: text}
                content.append(block | {"signature": SIGNATURE} if kind == "thinking" else block)
        elif isinstance(event, ToolCall):
            content.append(_tool_use(event))
        elif isinstance(event, Failure):
            return failure_response(event)
        elif isinstance(event, Finish):
            finish = event
    return JSONResponse(
        {
            **message,
            "content": content,
            "stop_reason": STOP_REASON[finish.reason],
            "stop_sequence": finish.stop_sequence,
            "usage": {**_input_usage(finish), "output_tokens": finish.completion_tokens},
        }
    )


def _input_usage(finish: Finish) -> dict:
    """Anthropic counts the prompt in parts: read from the cache, and the rest."""
    return {
        "input_tokens": finish.prompt_tokens - finish.cached_tokens,
        "cache_read_input_tokens": finish.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n"


async def _stream(engine: Engine, job, message: dict):
    yield _sse(
        "message_start",
        {
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": job.prompt_tokens, "output_tokens": 0},
            }
        },
    )
    yield _sse("ping", {})
    index, open_kind = 0, None  # the text or thinking block being streamed

    def close():
        nonlocal index, open_kind
        events = []
        if open_kind == "thinking":
            delta = {"type": "signature_delta", "signature": SIGNATURE}
            events.append(_sse("content_block_delta", {"index": index, "delta": delta}))
        events.append(_sse("content_block_stop", {"index": index}))
        index, open_kind = index + 1, None
        return events

    async for event in engine.events(job, keepalive=KEEPALIVE_S):
        if isinstance(event, Idle):
            yield _sse("ping", {})
            continue
        if isinstance(event, str | Reasoning):
            kind = "text" if isinstance(event, str) else "thinking"
            if open_kind != kind:
                for e in close() if open_kind else []:
                    yield e
                block = {"type": "text", "text": ""}
                if kind == "thinking":
                    block = {"type": "thinking", "thinking": "", "signature": ""}
                yield _sse("content_block_start", {"index": index, "content_block": block})
                open_kind = kind
            delta = (
                {"type": "text_delta", "text": event}
                if isinstance(event, str)
                else {"type": "thinking_delta", "thinking": event.text}
            )
            yield _sse("content_block_delta", {"index": index, "delta": delta})
            continue
        for e in close() if open_kind else []:
            yield e
        if isinstance(event, ToolCall):
            block = _tool_use(event)
            yield _sse(
                "content_block_start", {"index": index, "content_block": {**block, "input": {}}}
            )
            yield _sse(
                "content_block_delta",
                {
                    "index": index,
                    "delta": {
                        "type": "input_json_delta",
                        "partial_json": json.dumps(block["input"], ensure_ascii=False),
                    },
                },
            )
            yield _sse("content_block_stop", {"index": index})
            index += 1
        elif isinstance(event, Failure):
            if event.message != "cancelled":  # else the client left: nobody to tell
                yield _sse("error", _failure_body(event))
            return
        elif isinstance(event, Finish):
            yield _sse(
                "message_delta",
                {
                    "delta": {
                        "stop_reason": STOP_REASON[event.reason],
                        "stop_sequence": event.stop_sequence,
                    },
                    # What the prompt cache held is known once the prompt has run: here.
                    "usage": {**_input_usage(event), "output_tokens": event.completion_tokens},
                },
            )
            yield _sse("message_stop", {})


async def count_tokens(request: Request) -> Response:
    """The prompt /v1/messages would run for the same body: system, messages, tools and the
    thinking switch through the same conversion and template."""
    engine: Engine = request.app.state.engine
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        prompt, tools, template, _ = await _prepare(engine, body)
        return JSONResponse({"input_tokens": await engine.count_tokens(prompt, tools, template)})
    except RequestError as e:
        return error_response(e)
