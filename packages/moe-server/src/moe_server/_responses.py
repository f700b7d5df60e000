"""OpenAI Responses API: POST /v1/responses (stream and not), GET and DELETE /v1/responses/{id}.

A request's `input` (a string or a list of message, function_call and function_call_output
items) becomes chat messages for the template; the output (reasoning, message and function_call
items) comes from the same engine events as chat completions. Stored responses keep their whole
conversation so `previous_response_id` continues it; the store is bounded (oldest dropped).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import Engine
from ._openai import convert_messages
from ._openai_bodies import error_body, error_response, failure_response, unavailable_response
from ._openai_options import response_format as chat_response_format
from ._request import RequestError, read_json
from ._response_events import Run, new_id
from ._validate import effort_thinking, get, positive_int, sampling, template_kwargs, text_of
from ._worker import Unavailable

MAX_STORED = 256  # responses kept for previous_response_id and GET; the oldest go first
_REFUSED = ("background", "conversation", "prompt")


class Store:
    """Stored responses with the chat messages their conversation ended with."""

    def __init__(self, limit: int = MAX_STORED):
        self.limit = limit
        self._items: OrderedDict[str, tuple[dict, list[dict]]] = OrderedDict()

    def put(self, response: dict, messages: list[dict]) -> None:
        self._items[response["id"]] = (response, messages)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> tuple[dict, list[dict]] | None:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None


def _store(request: Request) -> Store:
    state = request.app.state
    if getattr(state, "responses", None) is None:
        state.responses = Store()
    return state.responses


def convert_input(value: Any) -> list[dict]:
    """`input` items as chat-completions messages (then converted like those)."""
    items = [{"role": "user", "content": value}] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RequestError("'input' must be a string or a list of items", param="input")
    messages: list[dict] = []
    thought = None  # a reasoning item's text, for the assistant turn that follows it
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"'{where}' must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = get(item, "role", str, required=True, where=f"{where}.")
            message = {"role": role, "content": _content(item.get("content"), f"{where}.content")}
            if role == "assistant" and thought:
                message["reasoning_content"], thought = thought, None
            messages.append(message)
        elif kind == "function_call":
            call = {
                "id": get(item, "call_id", str, required=True, where=f"{where}."),
                "type": "function",
                "function": {
                    "name": get(item, "name", str, required=True, where=f"{where}."),
                    "arguments": get(item, "arguments", str, default="{}", where=f"{where}."),
                },
            }
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and not thought:
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                if thought:
                    messages[-1]["reasoning_content"], thought = thought, None
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": get(item, "call_id", str, required=True, where=f"{where}."),
                    "content": _content(output, f"{where}.output"),
                }
            )
        elif kind == "reasoning":
            parts = [*(item.get("content") or []), *(item.get("summary") or [])]
            thought = "".join(p.get("text", "") for p in parts if isinstance(p, dict)) or None
        else:
            raise RequestError(
                f"'{where}.type' {kind!r} is not supported; use message, function_call, "
                "function_call_output or reasoning",
                param=f"{where}.type",
            )
    return convert_messages(messages)


def _content(content: Any, where: str) -> str:
    """Responses content parts (input_text, output_text) as one text."""
    return text_of(content, where, text_types=_TEXT_PARTS, allow_null=True)


_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def convert_tools(body: dict) -> tuple[list[dict] | None, str | None]:
    tools = get(body, "tools", list)
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None, None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict) and choice.get("type") == "function":
        forced = get(choice, "name", str, required=True, where="tool_choice.")
    elif choice == "auto":
        forced = None
    else:
        raise RequestError(
            "tool_choice must be auto, none, required or {'type': 'function', 'name': ...}",
            param="tool_choice",
        )
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise RequestError(
                f"'{where}.type' {kind!r} is not supported; only function tools",
                param=f"{where}.type",
            )
        function = {"name": get(tool, "name", str, required=True, where=f"{where}.")}
        for key in ("description", "parameters"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out, forced


def _text_format(body: dict) -> tuple[str, dict | None] | None:
    text = get(body, "text", dict, default={})
    fmt = get(text, "format", dict, where="text.")
    if fmt is not None and fmt.get("type") == "json_schema" and "json_schema" not in fmt:
        fmt = {"type": "json_schema", "json_schema": fmt}  # the Responses API's flat form
    return chat_response_format(fmt, "text.format")


async def create(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    store = _store(request)
    try:
        body = await read_json(request, engine.limits.max_body_bytes)
        for name in _REFUSED:
            if body.get(name):
                raise RequestError(f"'{name}' is not supported by this server", param=name)
        history: list[dict] = []
        previous = get(body, "previous_response_id", str)
        if previous is not None:
            stored = store.get(previous)
            if stored is None:
                raise RequestError(
                    f"previous response {previous!r} is not stored here (unknown, deleted, "
                    f"or older than the last {store.limit})",
                    param="previous_response_id",
                    status=404,
                    kind="not_found_error",
                )
            history = stored[1]
        # Instructions apply to this response only; the stored conversation is without them.
        instructions = get(body, "instructions", str)
        conversation = history + convert_input(get(body, "input", (str, list), required=True))
        system = [{"role": "system", "content": instructions}] if instructions else []
        tools, forced = convert_tools(body)
        reasoning = get(body, "reasoning", dict, default={})
        thinking = effort_thinking(reasoning.get("effort"), "reasoning.effort")
        max_tokens = positive_int(
            body, "max_output_tokens", default=engine.limits.max_tokens_default
        )
        template = template_kwargs(thinking=thinking)
        stream = get(body, "stream", bool, default=False)
        keep = get(body, "store", bool, default=True)
        grammar = await engine.constraint(_text_format(body), tools, forced, param="text.format")
        job = await engine.submit(
            system + conversation,
            tools=tools,
            stops=[],
            sampling=sampling(body, max_tokens=max_tokens),
            template=template,
            grammar=grammar,
            field="input",
        )
    except RequestError as e:
        return error_response(e)
    except Unavailable as e:
        return unavailable_response(e)
    response = _skeleton(body, engine, previous, instructions)
    run = Run(engine, job, response, conversation, store if keep else None)
    if stream:
        return StreamingResponse(run.events(), media_type="text/event-stream")
    async for _ in run.events(request):
        pass
    if run.failure is not None:
        return failure_response(run.failure)
    return JSONResponse(response)


def _skeleton(body: dict, engine: Engine, previous: str | None, instructions: str | None) -> dict:
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": engine.provider.model_id,
        "output": [],
        "instructions": instructions,
        "previous_response_id": previous,
        "tools": body.get("tools") or [],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "text": body.get("text") or {"format": {"type": "text"}},
        "reasoning": body.get("reasoning"),
        "store": body.get("store", True),
        "error": None,
        "incomplete_details": None,
        "usage": None,
    }


async def retrieve(request: Request) -> Response:
    stored = _store(request).get(request.path_params["response_id"])
    if stored is None:
        return _not_found(request.path_params["response_id"])
    return JSONResponse(stored[0])


async def delete(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not _store(request).delete(response_id):
        return _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


def _not_found(response_id: str) -> Response:
    return JSONResponse(
        {"error": error_body(f"no stored response {response_id!r}", "not_found_error")},
        status_code=404,
    )
