"""moe-server: OpenAI- and Anthropic-compatible HTTP server over a moe Session.

    app = create_app(session)               # a Starlette app
    serve(session, host="127.0.0.1", port=8080, api_key=None)

Endpoints: POST /v1/chat/completions, /v1/completions, /v1/responses, /v1/messages,
/v1/messages/count_tokens; GET /v1/models, /v1/models/{id}, /v1/responses/{id}, /health, /metrics;
DELETE /v1/responses/{id}.
"""

from ._app import BindError, check_bind, create_app, is_loopback
from ._provider import Provider
from ._serve import serve

__all__ = ["BindError", "Provider", "check_bind", "create_app", "is_loopback", "serve"]
