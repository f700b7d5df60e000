"""/v1/models and /v1/models/{id}: one answer that both the OpenAI and the Anthropic clients
parse (each ignores the other's fields), with the context length agents size prompts by."""

from __future__ import annotations

import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._engine import Engine


def model_object(engine: Engine) -> dict:
    """The loaded model (which answers any model name a request gives) in both APIs' shapes."""
    name = engine.provider.model_id
    context = engine.context_length()
    model = {
        # OpenAI
        "id": name,
        "object": "model",
        "created": engine.created,
        "owned_by": "moe",
        # Anthropic
        "type": "model",
        "display_name": engine.provider.model_id,
        "created_at": datetime.datetime.fromtimestamp(engine.created, datetime.UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        # The one context limit (prompt and answer together), under the names clients look for
        # (OpenRouter, vLLM, LM Studio, Anthropic).
        "context_length": context,
        "max_model_len": context,
        "max_context_length": context,
        "max_input_tokens": context,
    }
    # What a miss does, labelled: every mode but `exact` answers unlike the unmodified model.
    miss = getattr(getattr(engine.provider, "handle", None), "miss", None)
    if isinstance(miss, str):
        model["moe"] = {"miss": miss, "lossy": miss != "exact"}
    return model


async def models(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    model = model_object(engine)
    return JSONResponse(
        {
            "object": "list",
            "data": [model],
            "has_more": False,
            "first_id": model["id"],
            "last_id": model["id"],
        }
    )


async def model(request: Request) -> Response:
    """Any name: the model that would answer a request naming it, under its own id."""
    engine: Engine = request.app.state.engine
    return JSONResponse(model_object(engine))
