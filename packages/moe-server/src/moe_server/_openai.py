"""OpenAI API: /v1/chat/completions, and the request parsing /v1/completions shares."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import KEEPALIVE_S, Engine, Idle
from ._openai_options import Options, parse_options
from ._reasoning import Reasoning
from ._request import RequestError, read_json, retry_headers
from ._text import ToolCall
from ._validate import (
    arguments_object,
    get,
    text_of,
)
from ._worker import SHUTDOWN, Failure, Finish, Overloaded, TokenLogprob, Unavailable

FINISH = {"stop": "stop", "stop_sequence": "stop", "length": "length", "tool_calls": "tool_calls"}
# An SSE comment: clients skip it; it only tells them (and proxies) the stream is alive.
KEEPALIVE_COMMENT = ": keepalive\n\n"


def error_response(e: RequestError) -> JSONResponse:
    return JSONResponse(
        {"error": error_body(e.message, e.kind, e.param, e.code)}, status_code=e.status
    )


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"message": message, "type": kind, "param": param, "code": code}


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
    return _sse({"error": _failure_body(failure)})


def convert_messages(messages: list) -> list[dict]:
    """OpenAI messages into the chat template's format (assistant tool_calls, role "tool")."""
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object", param=where)
        role = get(message, "role", str, required=True, where=f"{where}.")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant", "tool"):
            raise RequestError(
                f"'{where}.role' {role!r} is not one of system, developer, user, assistant, tool",
                param=f"{where}.role",
            )
        converted: dict[str, Any] = {
            "role": role,
            "content": text_of(message.get("content"), f"{where}.content", allow_null=True),
        }
        if role == "assistant" and message.get("tool_calls"):
            calls = get(message, "tool_calls", list, where=f"{where}.")
            converted["tool_calls"] = [
                _history_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)
            ]
        if role == "tool":
            converted["tool_call_id"] = get(
                message, "tool_call_id", str, default="", where=f"{where}."
            )
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if role == "assistant" and isinstance(reasoning, str) and reasoning:
            converted["reasoning_content"] = reasoning  # templates that show it, show it
        out.append(converted)
    if not out:
        raise RequestError("'messages' must not be empty", param="messages")
    return out


def _history_call(call: Any, where: str) -> dict:
    if not isinstance(call, dict):
        raise RequestError(f"'{where}' must be an object", param=where)
    function = get(call, "function", dict, required=True, where=f"{where}.")
    name = get(function, "name", str, required=True, where=f"{where}.function.")
    arguments = arguments_object(function.get("arguments", {}), f"{where}.function.arguments")
    return {
        "id": call.get("id") or "",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def convert_tools(body: dict) -> tuple[list[dict] | None, str | None]:
    """The tools the template sees, and the tool a call is forced of: None for no forcing,
    "" for any tool (tool_choice "required"), else a name."""
    tools = get(body, "tools", list)
    choice = body.get("tool_choice", "auto")
    if choice == "none" or not tools:
        return None, None
    forced = _forced(choice)
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise RequestError(
                f"'{where}': only tools of type 'function' are supported", param=where
            )
        function = get(tool, "function", dict, required=True, where=f"{where}.")
        get(function, "name", str, required=True, where=f"{where}.function.")
        get(function, "parameters", dict, where=f"{where}.function.")
        out.append({"type": "function", "function": function})
    return out, forced


def _forced(choice: Any) -> str | None:
    if choice == "auto":
        return None
    if choice == "required":
        return ""
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = get(choice, "function", dict, required=True, where="tool_choice.")
        return get(function, "name", str, required=True, where="tool_choice.function.")
    raise RequestError(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': "
        "{'name': ...}}",
        param="tool_choice",
    )


def _usage(finish: Finish) -> dict:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def _tool_call_json(call: ToolCall) -> dict:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }


async def _start(request: Request, *, chat: bool):
    """Parse, validate and queue; returns (options, job) or an error response."""
    engine: Engine = request.app.state.engine
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        options = parse_options(body, engine, chat=chat)
        forced = None
        if chat:
            messages = get(body, "messages", list, required=True)
            prompt = convert_messages(messages)
            tools, forced = convert_tools(body)
        else:
            prompt, tools = get(body, "prompt", (str, list), required=True), None
            if isinstance(prompt, list):
                if len(prompt) != 1 or not isinstance(prompt[0], str):
                    raise RequestError(
                        "'prompt' must be a string or a list of one string", param="prompt"
                    )
                prompt = prompt[0]
            if not prompt:
                raise RequestError("'prompt' must not be empty", param="prompt")
        job = await engine.submit(
            prompt,
            tools=tools,
            stops=options.stops,
            sampling=options.sampling,
            template=options.template if chat else None,
            grammar=await engine.constraint(options.output, tools, forced, param="response_format"),
            logprobs=options.logprobs,
            field="messages" if chat else "prompt",
        )
    except RequestError as e:
        return None, error_response(e)
    except Unavailable as e:
        return None, unavailable_response(e)
    return options, job


def logprob_entry(item: TokenLogprob) -> dict:
    """A token in chat's logprobs.content shape."""
    return {
        "token": item.token,
        "logprob": item.logprob,
        "bytes": list(item.token.encode("utf-8")),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in item.top
        ],
    }


async def chat_completions(request: Request) -> Response:
    options, job = await _start(request, chat=True)
    if options is None:
        return job
    engine: Engine = request.app.state.engine
    meta = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": options.model,
    }
    if options.stream:
        return StreamingResponse(
            _chat_stream(engine, job, options, meta), media_type="text/event-stream"
        )
    text, reasoning, calls, logprobs = [], [], [], []
    async for event in engine.events(job, request):
        if isinstance(event, str):
            text.append(event)
        elif isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, TokenLogprob):
            logprobs.append(logprob_entry(event))
        elif isinstance(event, ToolCall):
            calls.append(_tool_call_json(event))
        elif isinstance(event, Failure):
            return failure_response(event)
        else:
            finish = event
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(text) or (None if calls else ""),
    }
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return JSONResponse(
        {
            **meta,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": logprobs} if options.logprobs is not None else None,
                    "finish_reason": FINISH[finish.reason],
                }
            ],
            "usage": _usage(finish),
        }
    )


async def _chat_stream(engine: Engine, job, options: Options, meta: dict):
    pending: list[dict] = []  # logprobs of tokens whose text has not been sent yet

    def chunk(delta: dict, finish_reason=None) -> str:
        logprobs = None
        if options.logprobs is not None and (pending or finish_reason):
            logprobs = {"content": pending[:]}
            pending.clear()
        return _sse(
            {
                **meta,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    }
                ],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    index = 0
    async for event in engine.events(job, keepalive=KEEPALIVE_S):
        if isinstance(event, Idle):
            yield KEEPALIVE_COMMENT
        elif isinstance(event, TokenLogprob):
            pending.append(logprob_entry(event))
        elif isinstance(event, str):
            yield chunk({"content": event})
        elif isinstance(event, Reasoning):
            yield chunk({"reasoning_content": event.text})
        elif isinstance(event, ToolCall):
            # As OpenAI streams them: id and name first, then the arguments.
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": event.id,
                            "type": "function",
                            "function": {"name": event.name, "arguments": ""},
                        }
                    ]
                }
            )
            yield chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": event.arguments_json}}]}
            )
            index += 1
        elif isinstance(event, Failure):
            if error := failure_event(event):
                yield error
            return
        else:
            yield chunk({}, FINISH[event.reason])
            if options.include_usage:
                yield _sse(
                    {
                        **meta,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": _usage(event),
                    }
                )
    yield _sse("[DONE]")
