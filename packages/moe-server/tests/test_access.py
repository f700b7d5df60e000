"""Who may read what: with an API key set, /metrics and every API route need it; /health stays
open but says only that the server is alive; the page (which holds no data) stays open."""

from __future__ import annotations

import httpx
import pytest

KEY = "s3cret"


@pytest.fixture(scope="module")
def keyed(serve_app, provider):
    return serve_app(provider, api_key=KEY)


def test_metrics_need_the_key_and_health_tells_only_liveness(keyed, provider):
    for path in ("/metrics", "/v1/models", "/live/events", "/v1/not-a-route"):
        response = httpx.get(keyed.url + path)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(keyed.url + "/metrics", headers={"x-api-key": "wrong"}).status_code == 401
    metrics = httpx.get(keyed.url + "/metrics", headers={"authorization": f"Bearer {KEY}"})
    assert metrics.status_code == 200 and "moe_requests_total" in metrics.text
    # Without the key: alive, and nothing else (no model name, no queue).
    assert httpx.get(keyed.url + "/health").json() == {"status": "ok"}
    detailed = httpx.get(keyed.url + "/health", headers={"x-api-key": KEY}).json()
    assert detailed["status"] == "ok" and detailed["model"] == provider.model_id
    assert httpx.get(keyed.url + "/").status_code == 200  # the page asks for the key itself


def test_without_a_key_everything_is_open_on_loopback(server, provider):
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/health").json()["model"] == provider.model_id
