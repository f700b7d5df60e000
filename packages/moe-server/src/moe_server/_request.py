"""A request's body and the errors a request can get: each API renders a RequestError in its
own error shape."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request


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


class ContextTooLong(RequestError):
    """The prompt leaves no room for an answer within the model's context (`prompt_tokens` of
    `limit`, prompt and answer together)."""

    def __init__(self, prompt_tokens: int, limit: int, *, param: str = "messages"):
        super().__init__(
            f"This model's maximum context length is {limit} tokens, prompt and answer "
            f"together; your prompt is {prompt_tokens} tokens. Shorten it.",
            param=param,
            code="context_length_exceeded",
        )
        self.prompt_tokens, self.limit = prompt_tokens, limit

    @property
    def anthropic_message(self) -> str:
        # Anthropic's own wording, which Claude Code reads to know how much to compact.
        return f"prompt is too long: {self.prompt_tokens} tokens > {self.limit - 1} maximum"


def retry_headers(seconds: float) -> dict[str, str]:
    """When to come back: `Retry-After` in whole seconds, and `retry-after-ms`, which the
    OpenAI and Anthropic clients read first."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(round(seconds * 1000)),
    }
