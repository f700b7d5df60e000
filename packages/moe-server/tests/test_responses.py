"""The OpenAI Responses API, driven by the official client's responses.create and
responses.stream: text, streaming events, function tools and their outputs, and conversations
the server keeps through previous_response_id."""

from __future__ import annotations

import json

import openai
import pytest
from _providers import ScriptedProvider

from moe_server._responses import Store

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def test_text_matches_chat_and_reports_incomplete(client):
    response = client.responses.create(
        model="m", input="Say hello.", instructions="Be brief.", max_output_tokens=8
    )
    chat = client.chat.completions.create(
        model="m",
        max_tokens=8,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
        ],
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == 8
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_stream_events_parse(serve_app, provider):
    scripted = ScriptedProvider(provider, ["Hello from the stream."])
    server = serve_app(scripted)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with client.responses.stream(model="m", input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "Hello from the stream."
    assert final.status == "completed"
    # responses.create(stream=True) yields the same events.
    raw = list(client.responses.create(model="m", input="Hi", stream=True))
    assert [e.type for e in raw] == kinds


def test_function_call_and_output_through_previous_response_id(serve_app, provider):
    scripted = ScriptedProvider(provider, [CALL, "It is cold in Oslo."])
    server = serve_app(scripted)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with client.responses.stream(
        model="m", input="Weather in Oslo?", tools=TOOLS, instructions="Use tools."
    ) as stream:
        kinds = [e.type for e in stream]
        first = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    second = client.responses.create(
        model="m",
        previous_response_id=first.id,
        tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}],
    )
    assert second.output_text == "It is cold in Oslo."
    assert second.previous_response_id == first.id
    # The server kept the conversation; instructions applied to the first response only.
    assert scripted.prompts[-1] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "-3C"},
    ]
    # The same conversation sent whole, as a stateless client does, reaches the same prompt.
    scripted.calls = 1
    client.responses.create(
        model="m",
        tools=TOOLS,
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"},
        ],
    )
    assert scripted.prompts[-1][1:] == scripted.prompts[-2][1:]


def test_unknown_previous_response_and_delete(client):
    with pytest.raises(openai.NotFoundError, match="not stored"):
        client.responses.create(model="m", input="Hi", previous_response_id="resp_nope")
    response = client.responses.create(model="m", input="Hi", max_output_tokens=2)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    unstored = client.responses.create(model="m", input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_store_is_bounded():
    store = Store(limit=2)
    for i in range(3):
        store.put({"id": f"r{i}"}, [])
    assert store.get("r0") is None and store.get("r1") and store.get("r2")


def test_json_schema_text_format(client):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="m",
        input="Answer.",
        max_output_tokens=20,
        reasoning={"effort": "none"},
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
    )
    assert response.status == "completed"
    assert isinstance(json.loads(response.output_text)["ok"], bool)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "background": True}, "background"),
        ({"input": [{"type": "input_image"}]}, "input[0].type"),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": 5}, "input"),
    ],
)
def test_refusals_name_the_field(client, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", **body)
    assert caught.value.body["param"] == param


def test_forced_function_call(client):
    """tool_choice "required" on the real model: the grammar makes it call the tool."""
    unit = {
        "type": "object",
        "properties": {"unit": {"enum": ["C", "F"]}},
        "required": ["unit"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="m",
        input="Weather?",
        tools=[{**TOOLS[0], "parameters": unit}],
        tool_choice="required",
        max_output_tokens=100,
        reasoning={"effort": "none"},
    )
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) in ({"unit": "C"}, {"unit": "F"})
