"""Anthropic Messages API: /v1/messages and /v1/messages/count_tokens."""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import Engine, RequestError, read_json
from ._text import ToolCall
from ._validate import arguments_object, get, positive_int, sampling, string_list
from ._worker import Failure, Finish, Overloaded

STOP_REASON = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}
RETRY_AFTER = "1"
# Blocks that carry nothing a local model can use; dropped from history rather than refused.
_IGNORED_BLOCKS = {"thinking", "redacted_thinking"}


def error_body(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(error_body(e.kind, e.message), status_code=e.status)


def overloaded_response() -> JSONResponse:
    return JSONResponse(
        error_body(
            "overloaded_error", "the server is busy: too many requests are queued; retry shortly"
        ),
        status_code=529,
        headers={"Retry-After": RETRY_AFTER},
    )


def _text_blocks(value: Any, where: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError(f"'{where}' must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(value):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise RequestError(
                f"'{where}[{i}]': block type {kind!r} is not supported here; only text"
            )
        texts.append(block["text"])
    return "".join(texts)


def convert_messages(body: dict) -> list[dict]:
    """Anthropic system + messages into the chat template's format (tool_calls, role "tool")."""
    out: list[dict] = []
    system = body.get("system")
    if system is not None:
        system_text = _text_blocks(system, "system")
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
        if role not in ("user", "assistant"):
            raise RequestError(f"'{where}.role' must be 'user' or 'assistant', got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"'{where}.content' must be a string or a list of blocks")
        texts, calls = [], []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
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
                text = _text_blocks(result, f"{at}.content") if result is not None else ""
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": get(block, "tool_use_id", str, default="", where=f"{at}."),
                        "content": text,
                    }
                )
            elif kind in _IGNORED_BLOCKS:
                continue
            else:
                raise RequestError(
                    f"'{at}': block type {kind!r} is not supported in a {role} message"
                )
        if texts or calls or role == "assistant":
            converted: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                converted["tool_calls"] = calls
            out.append(converted)
    return out


def convert_tools(body: dict) -> list[dict] | None:
    tools = get(body, "tools", list)
    choice = get(body, "tool_choice", dict, default={"type": "auto"})
    if not tools or choice.get("type") == "none":
        return None
    if choice.get("type") != "auto":
        raise RequestError(
            f"tool_choice type {choice.get('type')!r} is not supported; use 'auto' or "
            "'none' (forcing a tool is not supported)"
        )
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
    return out


def _tool_use(call: ToolCall) -> dict:
    arguments = (
        call.arguments if isinstance(call.arguments, dict) else {"arguments": call.arguments}
    )
    return {"type": "tool_use", "id": f"toolu_{call.id}", "name": call.name, "input": arguments}


async def messages(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        model = get(body, "model", str, required=True)
        max_tokens = positive_int(body, "max_tokens")
        if max_tokens is None:
            raise RequestError("missing required field 'max_tokens'")
        stream = get(body, "stream", bool, default=False)
        prompt, tools = convert_messages(body), convert_tools(body)
        job = await engine.submit(
            prompt,
            tools=tools,
            stops=string_list(body, "stop_sequences"),
            sampling=sampling(body, max_tokens=max_tokens),
        )
    except RequestError as e:
        return error_response(e)
    except Overloaded:
        return overloaded_response()
    message = {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
    }
    if stream:
        return StreamingResponse(_stream(engine, job, message), media_type="text/event-stream")
    content: list[dict] = []
    async for event in engine.events(job, request):
        if isinstance(event, str):
            if content and content[-1]["type"] == "text":
                content[-1]["text"] += event
            else:
                content.append({"type": "text", "text": event})
        elif isinstance(event, ToolCall):
            content.append(_tool_use(event))
        elif isinstance(event, Failure):
            return JSONResponse(
                error_body("api_error", f"generation failed: {event.message}"), status_code=500
            )
        elif isinstance(event, Finish):
            finish = event
    return JSONResponse(
        {
            **message,
            "content": content,
            "stop_reason": STOP_REASON[finish.reason],
            "stop_sequence": finish.stop_sequence,
            "usage": {
                "input_tokens": finish.prompt_tokens,
                "output_tokens": finish.completion_tokens,
            },
        }
    )


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
    index, text_open = 0, False
    async for event in engine.events(job):
        if isinstance(event, str):
            if not text_open:
                yield _sse(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                )
                text_open = True
            yield _sse(
                "content_block_delta",
                {"index": index, "delta": {"type": "text_delta", "text": event}},
            )
            continue
        if text_open:
            yield _sse("content_block_stop", {"index": index})
            index, text_open = index + 1, False
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
            if event.message != "cancelled":
                yield _sse("error", error_body("api_error", f"generation failed: {event.message}"))
            return
        elif isinstance(event, Finish):
            yield _sse(
                "message_delta",
                {
                    "delta": {
                        "stop_reason": STOP_REASON[event.reason],
                        "stop_sequence": event.stop_sequence,
                    },
                    "usage": {"output_tokens": event.completion_tokens},
                },
            )
            yield _sse("message_stop", {})


async def count_tokens(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        get(body, "model", str, required=True)
        prompt, tools = convert_messages(body), convert_tools(body)
        return JSONResponse({"input_tokens": await engine.count_tokens(prompt, tools)})
    except RequestError as e:
        return error_response(e)
