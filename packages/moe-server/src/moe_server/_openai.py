"""OpenAI API: /v1/chat/completions, and the request parsing /v1/completions shares (what both
send back: _openai_bodies.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import Engine
from ._openai_bodies import (
    FINISH,
    answer,
    completion_body,
    error_response,
    failure_response,
    sse,
    stream,
    unavailable_response,
)
from ._openai_options import Options, parse_options
from ._reasoning import Reasoning
from ._request import RequestError, read_json
from ._text import ToolCall
from ._validate import (
    arguments_object,
    get,
    text_of,
)
from ._worker import Failure, Finish, TokenLogprob, Unavailable


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
        chunks = _ChatChunks(meta, options)
        events = stream(
            engine,
            job,
            meta=meta,
            kind="chat.completion.chunk",
            include_usage=options.include_usage,
            render=chunks,
            start=[chunks.chunk({"role": "assistant", "content": ""})],
        )
        return StreamingResponse(events, media_type="text/event-stream")
    result = await answer(engine, job, request)
    if isinstance(result, Failure):
        return failure_response(result)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text or (None if result.calls else ""),
    }
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    if result.calls:
        message["tool_calls"] = [_tool_call_json(c) for c in result.calls]
    logprobs = [logprob_entry(item) for item in result.logprobs]
    choice = {
        "message": message,
        "logprobs": {"content": logprobs} if options.logprobs is not None else None,
    }
    return JSONResponse(completion_body(meta, "chat.completion", choice, result.finish))


class _ChatChunks:
    """A chat stream's chunks: text, reasoning and tool calls as deltas; a token's logprobs go
    out with the next chunk that carries its text."""

    def __init__(self, meta: dict, options: Options):
        self.meta, self.options = meta, options
        self.pending: list[dict] = []
        self.calls = 0

    def __call__(self, event) -> list[str]:
        out = []
        if isinstance(event, TokenLogprob):
            self.pending.append(logprob_entry(event))
        elif isinstance(event, str):
            out.append(self.chunk({"content": event}))
        elif isinstance(event, Reasoning):
            out.append(self.chunk({"reasoning_content": event.text}))
        elif isinstance(event, ToolCall):
            # As OpenAI streams them: id and name first, then the arguments.
            index, self.calls = self.calls, self.calls + 1
            named = {"name": event.name, "arguments": ""}
            call = {"index": index, "id": event.id, "type": "function", "function": named}
            out.append(self.chunk({"tool_calls": [call]}))
            arguments = {"index": index, "function": {"arguments": event.arguments_json}}
            out.append(self.chunk({"tool_calls": [arguments]}))
        elif isinstance(event, Finish):
            out.append(self.chunk({}, FINISH[event.reason]))
        return out

    def chunk(self, delta: dict, finish_reason=None) -> str:
        logprobs = None
        if self.options.logprobs is not None and (self.pending or finish_reason):
            logprobs, self.pending = {"content": self.pending}, []
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return sse({**self.meta, "object": "chat.completion.chunk", "choices": [choice]})
