"""Synthetic multi-turn tool-call conversations that teach the demo model to act as an agent.

Each conversation is a system prompt (a coding agent's, or a plain assistant's), a tool list and one
to three user turns, each answered through tool calls and their results (agent_scenarios.py), or a
plain assistant with functions made from documented functions of the corpus. Tool lists come in
three sizes: a few short tools, a dozen, or a coding agent's two dozen with long descriptions and a
long system prompt (the long-context share). They are rendered with the chat template the model
ships with, so the training text is exactly what the model is prompted with at inference.
Everything is drawn from a `random.Random` seeded per conversation.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import re
from collections.abc import Iterator

import agent_scenarios as sc
from agent_functions import docstrings, function_conversation
from agent_tools import EXTRA_NAMES, core_tool, function, system_prompt
from data import render

SCENARIOS = [
    (sc.read_file, 26),
    (sc.list_files, 10),
    (sc.find_definition, 10),
    (sc.run_tests, 7),
    (sc.run_command, 10),
    (sc.write_file, 12),
    (sc.edit_file, 10),
    (sc.chat, 3),
]
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following "
    "context:\n# currentDate\nToday's date is 2026-{m:02d}-{d:02d}.\n</system-reminder>\n\n"
)


def coding_conversation(rng: random.Random, sources: list[str], pool: list[str]):
    size = rng.choices(["small", "medium", "large"], weights=[55, 33, 12])[0]
    project = sc.make_project(rng, sources, pool)
    b = sc.Builder(rng, project)
    for turn in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
        start = len(b.messages)
        scenario = rng.choices([s for s, _ in SCENARIOS], weights=[w for _, w in SCENARIOS])[0]
        ask = scenario(b, pool) if scenario is sc.write_file else scenario(b)
        if rng.random() < 0.15:
            ask = REMINDER.format(m=rng.randint(1, 12), d=rng.randint(1, 28)) + ask
        turn_messages = [{"role": "user", "content": ask}]
        if turn == 0 and size != "small" and rng.random() < 0.3:  # as Claude Code does
            skills = docstrings(pool[:4], 300)[:6]
            listed = "\n".join(f"- {rng.choice(EXTRA_NAMES)}: {s.splitlines()[0]}" for s in skills)
            turn_messages.append({"role": "system", "content": f"Available skills:\n{listed}"})
        b.messages[start:start] = turn_messages
    longest = {"small": 200, "medium": 800, "large": 6000}[size]
    docs = docstrings(pool, longest) or ["Does what its name says."]
    rng.shuffle(docs)
    n_extra = {
        "small": rng.randint(0, 3),
        "medium": rng.randint(3, 10),
        "large": rng.randint(14, 24),
    }[size]
    notes = size == "large" or rng.random() < 0.4
    tools = [core_tool(cap, variant, rng, notes=notes) for cap, variant in project.tools.items()]
    # A coding agent's long tool descriptions: several docstrings to a tool.
    per_tool = (lambda: rng.randint(2, 6)) if size == "large" else (lambda: 1)
    cursor = 0
    for name in rng.sample(EXTRA_NAMES, n_extra):
        k = per_tool()
        doc = "\n\n".join(docs[(cursor + i) % len(docs)] for i in range(k))
        cursor += k
        props = {w: {"type": "string"} for w in re.findall(r"\b[a-z]{4,10}\b", doc)[:3]}
        tools.append(function(name, doc, {"type": "object", "properties": props}))
    if rng.random() < 0.5:
        tools.sort(key=lambda t: t["function"]["name"])
    else:
        rng.shuffle(tools)
    padding = (
        [docs[(cursor + i) % len(docs)] for i in range(rng.randint(2, 8))]
        if size == "large"
        else []
    )
    system = system_prompt(rng, project.cwd, padding)
    return [{"role": "system", "content": system}, *b.messages], tools


def conversation(rng: random.Random, texts: list[str]) -> tuple[list, list]:
    """texts: a few corpus files; the short ones become the project, all of them the pool."""
    if rng.random() < 0.15 and (made := function_conversation(rng, texts)):
        return made
    sources = [t for t in texts if len(t) < 8000][: rng.randint(1, 4)] or [texts[0][:4000]]
    return coding_conversation(rng, sources, texts)


_TEXTS: list[str] = []  # the corpus, inherited by forked workers rather than pickled per task


def _task(task: tuple[int, list[int]]) -> str:
    seed, indices = task
    return render(*conversation(random.Random(seed), [_TEXTS[i] for i in indices]))


def tasks(n_texts: int, seed: int, group: int = 12) -> Iterator[tuple[int, list[int]]]:
    """Endless (seed, file indices) tasks: groups of `group` files in a seeded order, pass after
    pass."""
    order = list(range(n_texts))
    per_pass = max(1, n_texts // group)
    for n in range(1 << 30):
        if n % per_pass == 0:
            random.Random(seed * 7919 + n).shuffle(order)
        start = (n % per_pass) * group
        yield seed * 1_000_003 + n, order[start : start + group]


def agent_texts(texts: list[str], budget_chars: int, seed: int, workers: int) -> list[str]:
    """Rendered conversations, in order, until they reach `budget_chars`."""
    global _TEXTS
    _TEXTS = texts
    out, total, stream = [], 0, tasks(len(texts), seed)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        while total < budget_chars:  # in batches: imap would drain an endless iterable
            for text in pool.imap(_task, itertools.islice(stream, 64 * workers), chunksize=4):
                out.append(text)
                total += len(text)
                if total >= budget_chars:
                    break
    _TEXTS = []
    return out
