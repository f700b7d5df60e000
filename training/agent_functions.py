"""Function-tool conversations for the demo model's agent data (agent_data.py mixes them in).

A plain assistant offered function tools: everyday ones (weather, time, arithmetic, ...) asked for
in the user's own words, or functions made from the documented functions of corpus files, asked
for by name or by their docstring's first line. The assistant calls one, gets its result and says
what it returned.
"""

from __future__ import annotations

import json
import random
import re

import agent_scenarios as sc
from agent_tools import USERS, function, string

# A docstring right under a one-line def or class statement. No `^` anchor: Python's re tries a
# MULTILINE `^` at every character, a leading literal only where its first character occurs.
DOCSTRING = re.compile(r'(?:def|class) [^\n]*:[ \t]*\n[ \t]*[rRuU]?"""\s*(.{40,6000}?)\s*"""', re.S)
SIGNATURE = re.compile(r"def (?P<name>[A-Za-z_]\w*)\((?P<args>[^)]*)\)")
PARAM = re.compile(r"^\s*(\w+)\s*(?::\s*([^=]+?))?\s*(?:=\s*(.+))?$")


def _number(description: str) -> dict:
    return {"type": "number", "description": description}


# Everyday function tools, as API examples and client tests define them: (tool, ways to ask with
# {placeholders} filled from `values`, argument names to fill, a result maker, an answer).
CITIES = ["Paris", "Tokyo", "Berlin", "Lima", "Oslo", "Cairo", "Denver", "Seoul", "Madrid"]
EVERYDAY = [
    (
        function(
            "get_weather",
            "Get the current weather for a location.",
            {
                "type": "object",
                "properties": {
                    "location": string("City name, e.g. Paris"),
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        ),
        [
            "What's the weather in {location}?",
            "Is it cold in {location} right now?",
            "weather {location}",
        ],
        {"location": CITIES},
        lambda rng, a: {
            "temperature": rng.randint(-5, 35),
            "conditions": rng.choice(["sunny", "cloudy", "rain", "snow"]),
        },
        lambda a, r: f"It is {r['temperature']} degrees and {r['conditions']} in {a['location']}.",
    ),
    (
        function(
            "get_time",
            "Get the current time in a time zone.",
            {
                "type": "object",
                "properties": {"timezone": string("IANA time zone name")},
                "required": ["timezone"],
            },
        ),
        ["What time is it in {timezone}?", "Current time in {timezone}?"],
        {"timezone": ["Europe/Paris", "Asia/Tokyo", "America/New_York", "UTC"]},
        lambda rng, a: {"time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"},
        lambda a, r: f"It is {r['time']} in {a['timezone']}.",
    ),
    (
        function(
            "add",
            "Add two numbers.",
            {
                "type": "object",
                "properties": {"a": _number("First number"), "b": _number("Second number")},
                "required": ["a", "b"],
            },
        ),
        ["What is {a} + {b}?", "Add {a} and {b}.", "Please add {a} and {b} using the tool."],
        {"a": list(range(1, 500)), "b": list(range(1, 500))},
        lambda rng, a: a["a"] + a["b"],
        lambda a, r: f"{a['a']} + {a['b']} = {r}.",
    ),
    (
        function(
            "search_docs",
            "Search the documentation and return the best matching page.",
            {
                "type": "object",
                "properties": {"query": string("What to look for")},
                "required": ["query"],
            },
        ),
        ["Search the docs for {query}.", "How do I {query}? Look it up."],
        {"query": ["install the package", "configure logging", "run the server", "use the cache"]},
        lambda rng, a: {
            "title": a["query"].capitalize(),
            "url": "https://docs.example.com/" + a["query"].replace(" ", "-"),
        },
        lambda a, r: f'See "{r["title"]}": {r["url"]}',
    ),
    (
        function(
            "get_stock_price",
            "Get the latest price of a stock by ticker symbol.",
            {
                "type": "object",
                "properties": {"symbol": string("Ticker, e.g. AAPL")},
                "required": ["symbol"],
            },
        ),
        ["What's {symbol} trading at?", "Price of {symbol}?"],
        {"symbol": ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN"]},
        lambda rng, a: {"symbol": a["symbol"], "price": round(rng.uniform(10, 900), 2)},
        lambda a, r: f"{a['symbol']} is at {r['price']}.",
    ),
    (
        function(
            "lookup_user",
            "Look up a user account by id.",
            {
                "type": "object",
                "properties": {"user_id": {"type": "integer"}},
                "required": ["user_id"],
            },
        ),
        ["Who is user {user_id}?", "Find the account with id {user_id}."],
        {"user_id": list(range(1, 9999))},
        lambda rng, a: {"id": a["user_id"], "name": rng.choice(USERS)},
        lambda a, r: f"User {a['user_id']} is {r['name']}.",
    ),
]


def docstrings(texts: list[str], longest: int) -> list[str]:
    out = []
    for text in texts:
        for m in DOCSTRING.finditer(text, 0, 40_000):
            doc = m.group(1).strip()
            if "\\" not in doc and len(doc) <= longest:
                out.append(doc)
    return out


def json_type(annotation: str | None, default: str | None) -> str:
    hint = (annotation or "") + " " + (default or "")
    for needle, kind in (
        ("bool", "boolean"),
        ("True", "boolean"),
        ("False", "boolean"),
        ("int", "integer"),
        ("float", "number"),
        ("list", "array"),
        ("List", "array"),
        ("dict", "object"),
        ("Dict", "object"),
    ):
        if needle in hint:
            return kind
    return "string"


def function_tools(texts: list[str]) -> list[tuple[dict, list[tuple[str, str, bool]]]]:
    """Function tools from documented public functions: (tool, [(arg, json type, required)])."""
    out = []
    for text in texts:
        for m in DOCSTRING.finditer(text, 0, 40_000):
            signature = SIGNATURE.match(text, m.start())
            if not signature or signature.group("name").startswith("_"):
                continue
            params = []
            for part in signature.group("args").split(","):
                p = PARAM.match(part)
                if p and p.group(1) not in ("self", "cls") and "*" not in part:
                    params.append((p.group(1), json_type(p.group(2), p.group(3)), not p.group(3)))
            if not 1 <= len(params) <= 4:
                continue
            summary = m.group(1).split("\n\n")[0].strip()
            properties = {p: {"type": t} for p, t, _ in params}
            required = [p for p, _, r in params if r]
            schema = {"type": "object", "properties": properties, "required": required}
            out.append((function(signature.group("name"), summary, schema), params))
    return out


def value(rng: random.Random, kind: str, words: list[str]):
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return rng.sample(words, min(len(words), 2))
    if kind == "object":
        return {rng.choice(words): rng.randint(0, 9)}
    return rng.choice([*words, "data.csv", "/tmp/out.txt", "hello", "main"])


def everyday_conversation(rng: random.Random, texts: list[str]) -> tuple[list, list]:
    """A plain assistant with everyday function tools; the user asks in their own words."""
    offered = rng.sample(EVERYDAY, rng.randint(1, len(EVERYDAY)))
    tool, asks, values, result_of, answer_of = rng.choice(offered)
    arguments = {k: rng.choice(v) for k, v in values.items()}
    result = result_of(rng, arguments)
    name = tool["function"]["name"]
    b = sc.Builder(rng, sc.Project("", {}, {}, ""))
    b.messages.append({"role": "user", "content": rng.choice(asks).format(**arguments)})
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    b.step([call], [json.dumps(result)], f"I'll call {name}.")
    b.answer(answer_of(arguments, result))
    tools = [t[0] for t in offered] + [t for t, _ in function_tools(texts[:2])][: rng.randint(0, 3)]
    rng.shuffle(tools)
    system = rng.choice(
        [
            "You are a helpful assistant.",
            "You are a helpful assistant that can call functions.",
            "Answer the user's questions, using the tools.",
        ]
    )
    messages = [{"role": "system", "content": system}] if rng.random() < 0.8 else []
    return [*messages, *b.messages], tools


def function_conversation(rng: random.Random, texts: list[str]) -> tuple[list, list] | None:
    """A plain assistant with a few function tools; the user asks for what one of them does."""
    if rng.random() < 0.5:
        return everyday_conversation(rng, texts)
    tools = function_tools(texts)
    if not tools:
        return None
    rng.shuffle(tools)
    tools = tools[: rng.randint(1, 6)]
    (tool, params) = rng.choice(tools)
    spec = tool["function"]
    words = sorted(set(re.findall(r"[a-z]{4,12}", texts[0][:20_000])))[:200] or ["value"]
    arguments = {p: value(rng, t, words) for p, t, r in params if r or rng.random() < 0.4}
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in arguments.items()) or "no arguments"
    ask = rng.choice(
        [
            f"Use {spec['name']} with {shown}.",
            f"Call {spec['name']} ({shown}).",
            f"{spec['description'].splitlines()[0]} ({shown})",
        ]
    )
    result = rng.choice(
        [
            json.dumps({"result": value(rng, "integer", words)}),
            "OK",
            json.dumps(value(rng, "string", words)),
            str(rng.randint(0, 999)),
        ]
    )
    b = sc.Builder(rng, sc.Project("", {}, {}, ""))
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": spec["name"], "arguments": arguments},
    }
    b.messages.append({"role": "user", "content": ask})
    b.step([call], [result], f"The user asks for {spec['name']}; I'll call it.")
    b.answer(rng.choice([f"`{spec['name']}` returned {result}.", f"The result is {result}."]))
    system = rng.choice(
        [
            "You are a helpful assistant.",
            "You are a helpful assistant that can call functions.",
            "Answer the user's questions, using the tools.",
        ]
    )
    return [{"role": "system", "content": system}, *b.messages], [t for t, _ in tools]
