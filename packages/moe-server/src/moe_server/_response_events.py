"""The Responses API's output: engine events turned into output items (reasoning, message,
function_call) and, when streaming, the event sequence the official client parses."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from ._engine import KEEPALIVE_S, Idle
from ._openai_bodies import KEEPALIVE_COMMENT
from ._reasoning import Reasoning
from ._text import ToolCall
from ._worker import Failure, Finish


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Run:
    """Turns one generation's events into output items and, for streaming, the Responses
    event sequence; the finished response is stored with its conversation."""

    def __init__(self, engine, job, response: dict, messages: list[dict], store: Any):
        self.engine, self.job, self.response = engine, job, response
        self.messages, self.store = messages, store
        self.failure: Failure | None = None
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
        keepalive = None if request is not None else KEEPALIVE_S  # only a stream needs it
        async for event in self.engine.events(self.job, request, keepalive=keepalive):
            if isinstance(event, Idle):
                yield KEEPALIVE_COMMENT
            elif isinstance(event, str | Reasoning):
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
                self.failure = event
                if event.message != "cancelled":  # else the client left: nobody to tell
                    code = "server_shutting_down" if event.shutdown else "server_error"
                    self.response["status"] = "failed"
                    self.response["error"] = {"code": code, "message": event.message}
                    yield self._event("response.failed", response=self.response)
                return
            elif isinstance(event, Finish):
                for e in self._close():
                    yield e
                yield self._finish(event)

    def _add(self, kind: str) -> list[str]:
        index = len(self.response["output"])
        item: dict[str, Any]
        if kind == "message":
            item = {
                "type": "message",
                "id": new_id("msg"),
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        else:
            item = {
                "type": "reasoning",
                "id": new_id("rs"),
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
        assert item is not None  # a delta follows the item it adds to
        item["content"][0]["text"] += text
        kind = (
            "response.output_text.delta"
            if item["type"] == "message"
            else ("response.reasoning_text.delta")
        )
        extra: dict[str, Any] = {"logprobs": []} if item["type"] == "message" else {}
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
            "id": new_id("fc"),
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
            "input_tokens_details": {"cached_tokens": finish.cached_tokens},
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
