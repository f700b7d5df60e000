"""OpenAI Responses API: POST /v1/responses (stream and not), GET and DELETE /v1/responses/{id}.

A request's `input` (a string or a list of message, function_call and function_call_output
items) becomes chat messages for the template; the output (reasoning, message and function_call
items) comes from the same engine events as chat completions. Stored responses keep their whole
conversation so `previous_response_id` continues it; the store is bounded (oldest dropped).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ._engine import Engine, RequestError, read_json
from ._openai import convert_messages, error_body, error_response, overloaded_response
from ._openai import response_format as chat_response_format
from ._reasoning import Reasoning
from ._text import ToolCall
from ._validate import effort_thinking, get, positive_int, sampling, template_kwargs
from ._worker import Failure, Finish, Overloaded

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


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


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


def _content(content: Any, where: str) -> Any:
    """Responses content parts (input_text, output_text) as chat text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise RequestError(f"'{where}' must be a string or a list of parts", param=where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(
            part.get("text"), str
        ):
            raise RequestError(
                f"'{where}[{j}]': part type {kind!r} is not supported; only text",
                param=f"{where}[{j}]",
            )
        parts.append({"type": "text", "text": part["text"]})
    return parts


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
        grammar = await engine.constraint(_text_format(body), tools, forced, param="text.format")
        job = await engine.submit(
            system + conversation,
            tools=tools,
            stops=[],
            sampling=sampling(body, max_tokens=max_tokens),
            template=template,
            grammar=grammar,
        )
    except RequestError as e:
        return error_response(e)
    except Overloaded:
        return overloaded_response()
    response = _skeleton(body, engine, previous, instructions)
    run = _Run(engine, job, response, conversation, store if body.get("store", True) else None)
    if get(body, "stream", bool, default=False):
        return StreamingResponse(run.events(), media_type="text/event-stream")
    async for _ in run.events(request):
        pass
    if run.failure is not None:
        return JSONResponse(
            {"error": error_body(f"generation failed: {run.failure}", "server_error")},
            status_code=500,
        )
    return JSONResponse(response)


def _skeleton(body: dict, engine: Engine, previous: str | None, instructions: str | None) -> dict:
    return {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": body.get("model") or engine.provider.model_id,
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


class _Run:
    """Turns one generation's events into output items and, for streaming, the Responses
    event sequence; the finished response is stored with its conversation."""

    def __init__(self, engine, job, response: dict, messages: list[dict], store: Store | None):
        self.engine, self.job, self.response = engine, job, response
        self.messages, self.store = messages, store
        self.failure: str | None = None
        self._sequence = 0
        self._open: dict | None = None  # the reasoning or message item being written

    def _event(self, kind: str, **data) -> str:
        payload = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events(self, request: Request | None = None) -> AsyncIterator[str]:
        self.response["status"] = "in_progress"
        yield self._event("response.created", response=self.response)
        yield self._event("response.in_progress", response=self.response)
        async for event in self.engine.events(self.job, request):
            if isinstance(event, str | Reasoning):
                kind = "message" if isinstance(event, str) else "reasoning"
                if self._open is None or self._open["type"] != kind:
                    for e in self._close():
                        yield e
                    for e in self._add(kind):
                        yield e
                for e in self._delta(event if isinstance(event, str) else event.text):
                    yield e
            elif isinstance(event, ToolCall):
                for e in [*self._close(), *self._call(event)]:
                    yield e
            elif isinstance(event, Failure):
                self.failure = event.message
                if event.message != "cancelled":
                    self.response["status"] = "failed"
                    self.response["error"] = {"code": "server_error", "message": event.message}
                    yield self._event("response.failed", response=self.response)
                return
            elif isinstance(event, Finish):
                for e in self._close():
                    yield e
                yield self._finish(event)

    def _add(self, kind: str) -> list[str]:
        index = len(self.response["output"])
        if kind == "message":
            item = {
                "type": "message",
                "id": _id("msg"),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        else:
            item = {
                "type": "reasoning",
                "id": _id("rs"),
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
        self.response["output"].append(item)
        self._open = item
        events = [self._event("response.output_item.added", output_index=index, item=dict(item))]
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        else:
            item["content"].append({"type": "reasoning_text", "text": ""})
        return events

    def _delta(self, text: str) -> list[str]:
        item, index = self._open, len(self.response["output"]) - 1
        item["content"][0]["text"] += text
        kind = (
            "response.output_text.delta"
            if item["type"] == "message"
            else ("response.reasoning_text.delta")
        )
        extra = {"logprobs": []} if item["type"] == "message" else {}
        return [
            self._event(
                kind, item_id=item["id"], output_index=index, content_index=0, delta=text, **extra
            )
        ]

    def _close(self) -> list[str]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.response["output"].index(item)
        item["status"] = "completed"
        part = item["content"][0]
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if item["type"] == "message":
            events = [
                self._event("response.output_text.done", **common, text=part["text"], logprobs=[]),
                self._event("response.content_part.done", **common, part=part),
            ]
        else:
            events = [self._event("response.reasoning_text.done", **common, text=part["text"])]
        return [*events, self._event("response.output_item.done", output_index=index, item=item)]

    def _call(self, call: ToolCall) -> list[str]:
        index = len(self.response["output"])
        item = {
            "type": "function_call",
            "id": _id("fc"),
            "call_id": f"call_{call.id}",
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        self.response["output"].append(item)
        added = self._event("response.output_item.added", output_index=index, item=dict(item))
        item["arguments"], item["status"] = call.arguments_json, "completed"
        common = {"item_id": item["id"], "output_index": index}
        return [
            added,
            self._event(
                "response.function_call_arguments.delta", **common, delta=item["arguments"]
            ),
            self._event(
                "response.function_call_arguments.done",
                **common,
                arguments=item["arguments"],
                name=call.name,
            ),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _finish(self, finish: Finish) -> str:
        response = self.response
        response["usage"] = {
            "input_tokens": finish.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": finish.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        }
        if finish.reason == "length":
            response["status"] = "incomplete"
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            response["status"] = "completed"
        if self.store is not None:
            self.store.put(response, self.messages + _as_messages(response["output"]))
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return self._event(kind, response=response)


def _as_messages(output: list[dict]) -> list[dict]:
    """Output items as the chat messages the next turn's template sees."""
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    for item in output:
        if item["type"] == "message":
            message["content"] += item["content"][0]["text"]
        elif item["type"] == "reasoning":
            message["reasoning_content"] = item["content"][0]["text"]
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": _arguments(item)},
            }
            message.setdefault("tool_calls", []).append(call)
    return [message]


def _arguments(item: dict) -> Any:
    try:
        parsed = json.loads(item["arguments"])
    except json.JSONDecodeError:
        return item["arguments"]
    return parsed if isinstance(parsed, dict) else item["arguments"]


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
