"""The scenarios of the synthetic agent conversations (agent_data.py puts them together).

A `Project` lays a few files of the corpus out under a working directory. Each scenario adds one
user turn to a `Builder`: the user asks for something a coding agent does with its tools (read a
file, list files, find a definition, run the tests or a command, write or edit a file); the
assistant calls one of the project's tools, sometimes after a short thought; the tool's result
comes back and the assistant answers in text from it, or calls the next tool.
"""

from __future__ import annotations

import random
import re
import textwrap
from dataclasses import dataclass

from agent_tools import CORE, ROOTS, USERS

DEF = re.compile(r"^(?P<indent>[ \t]*)def (?P<name>[A-Za-z_]\w*)\((?P<args>[^)]*)\)", re.M)
SENTENCE = re.compile(r"\n[ \t]*(?:#[ \t]*)?([A-Z][^=(){}\[\]<>`\"\\\n]{15,100}[.!])[ \t]*(?=\n)")
MODULES = [
    "utils",
    "main",
    "app",
    "core",
    "helpers",
    "models",
    "config",
    "cli",
    "server",
    "io",
    "parser",
    "tasks",
    "api",
    "db",
    "cache",
    "engine",
    "client",
    "tools",
    "worker",
]


@dataclass(slots=True)
class Project:
    cwd: str
    files: dict[str, str]  # relative path -> text
    tools: dict[str, tuple]  # capability -> variant (agent_tools.CORE)
    numbered: str  # how Read numbers lines: "{:>6}\t" or "{}\t"


class Builder:
    """One conversation: its messages, tool calls numbered from 1."""

    def __init__(self, rng: random.Random, project: Project):
        self.rng, self.project, self.messages, self.calls = rng, project, [], 0

    def path(self, rel: str) -> str:
        name = self.project.tools["read"][0]
        return f"{self.project.cwd}/{rel}" if name[0].isupper() or self.rng.random() < 0.5 else rel

    def has(self, capability: str) -> bool:
        return capability in self.project.tools

    def call(self, capability: str, *values, extra: dict | None = None) -> dict:
        name, names = self.project.tools[capability][:2]
        arguments = {k: v for k, v in zip(names, values, strict=False) if v is not None}
        arguments.update(extra or {})
        self.calls += 1
        return {
            "id": f"call_{self.calls}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    def step(self, calls: list[dict], results: list[str], thought: str | None) -> None:
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        if thought and self.rng.random() < 0.5:
            message["reasoning_content"] = thought
        self.messages.append(message)
        for c, r in zip(calls, results, strict=True):
            self.messages.append({"role": "tool", "tool_call_id": c["id"], "content": r})

    def answer(self, text: str, thought: str | None = None) -> None:
        message = {"role": "assistant", "content": text}
        if thought and self.rng.random() < 0.4:
            message["reasoning_content"] = thought
        self.messages.append(message)

    def shell(self, command: str, description: str) -> dict:
        name = self.project.tools["shell"][0]
        described = description if name == "Bash" and self.rng.random() < 0.6 else None
        return self.call("shell", command, described)

    def read_result(self, rel: str) -> str:
        lines = self.project.files[rel].splitlines()[: self.rng.choice([60, 120, 200])]
        fmt = self.project.numbered
        return "\n".join(fmt.format(i) + line for i, line in enumerate(lines, 1))


def sentences(text: str) -> list[str]:
    return [m.group(1).strip() for m in SENTENCE.finditer(text, 0, 40_000)]


def functions(text: str) -> list[tuple[str, int, str, str]]:
    """Top-level and method definitions: (name, line, def line, argument list)."""
    out, line, last = [], 1, 0
    for m in DEF.finditer(text, 0, 40_000):
        line += text.count("\n", last, m.start())
        last = m.start()
        out.append((m.group("name"), line, m.group(0).strip(), m.group("args")))
    return out


def make_project(rng: random.Random, sources: list[str], pool: list[str]) -> Project:
    user, proj = rng.choice(USERS), rng.choice([*MODULES, "proj", "demo", "service", "lib"])
    cwd = rng.choice(ROOTS).format(user=user, proj=proj + rng.choice(["", "-app", "2", "_py"]))
    files: dict[str, str] = {}
    sub = rng.choice(["", "", "src/", f"{proj}/", "app/"])
    for text in sources:
        names = [f[0] for f in functions(text) if not f[0].startswith("_")]
        stem = rng.choice(names[:3] + MODULES) if names else rng.choice(MODULES)
        files.setdefault(f"{sub}{stem.lower()}.py", text)
    said = sentences(rng.choice(pool)) or ["Remember to update the changelog."]
    if rng.random() < 0.7:
        note = rng.choice(["notes.txt", "TODO.md", "todo.txt", "NOTES.md", "message.txt"])
        files[note] = "\n".join(rng.sample(said, min(len(said), rng.choice([1, 1, 2, 4])))) + "\n"
    if rng.random() < 0.5:
        files["README.md"] = f"# {proj}\n\n{rng.choice(said)}\n"
    if rng.random() < 0.4:
        test = f"tests/test_{rng.choice(MODULES)}.py"
        files[test] = "import pytest\n\n\ndef test_runs():\n    assert True\n"
    tools = {cap: rng.choice(variants) for cap, variants in CORE.items()}
    if rng.random() < 0.65:  # mostly Claude Code's names, all of them
        tools = {cap: variants[0] for cap, variants in CORE.items()}
    for cap in ("glob", "grep"):  # agents without search tools search through the shell
        if rng.random() < 0.25:
            del tools[cap]
    numbered = rng.choice(["{:>6}\t", "{}\t"])
    return Project(cwd, files, tools, numbered)


# Scenarios: each adds one user turn and what follows it to the builder.


def read_file(b: Builder) -> str:
    rel = b.rng.choice(list(b.project.files))
    ask = b.rng.choice(
        [
            "What does {f} say?",
            "What's in {f}?",
            "Show me {f}.",
            "Open {f}.",
            "Read {f} and tell me what it does.",
            "Can you summarize {f}?",
            "what does {f} contain",
            "Look at {f} please.",
            "Explain {f}.",
        ]
    )
    text = b.project.files[rel]
    others = [f for f in b.project.files if f != rel]
    if others and b.rng.random() < 0.1:  # two independent calls in one message
        other = b.rng.choice(others)
        b.step(
            [b.call("read", b.path(rel)), b.call("read", b.path(other))],
            [b.read_result(rel), b.read_result(other)],
            f"I'll read {rel} and {other}.",
        )
        n, m = len(text.splitlines()), len(b.project.files[other].splitlines())
        b.answer(f"`{rel}` has {n} lines and `{other}` has {m}.")
        return b.rng.choice(["Compare {f} and {g}.", "Read {f} and {g}."]).format(f=rel, g=other)
    missing = b.rng.random() < 0.06
    if missing:  # a wrong guess first, then a look around
        wrong = "src/" + rel if not rel.startswith("src/") else rel[4:]
        error = b.rng.choice(["File does not exist.", f"Error: no such file: {wrong}"])
        b.step([b.call("read", b.path(wrong))], [error], f"I'll read {wrong}.")
        listing = "\n".join(sorted(b.project.files))
        b.step(
            [b.shell("ls -R", "List files recursively")],
            [listing],
            f"{wrong} does not exist; I'll look for {rel.split('/')[-1]}.",
        )
    b.step(
        [b.call("read", b.path(rel))],
        [b.read_result(rel)],
        f"The user wants to know what {rel} contains. I'll read it.",
    )
    lines = text.strip().splitlines()
    defs = [f"`{f[0]}`" for f in functions(text) if not f[0].startswith("_")][:6]
    if rel.endswith(".py") and defs:
        listed = ", ".join(defs[:-1]) + (f" and {defs[-1]}" if len(defs) > 1 else defs[-1])
        said = sentences(text)
        more = f" {said[0]}" if said and b.rng.random() < 0.5 else ""
        b.answer(f"`{rel}` defines {listed}.{more}", f"It has {len(lines)} lines.")
    elif len(lines) <= 4:
        quoted = "\n".join(lines)
        b.answer(
            b.rng.choice(
                [
                    f"`{rel}` says:\n\n{quoted}",
                    f"It says: {quoted}",
                    f"The file {rel} contains:\n\n{quoted}",
                ]
            )
        )
    else:
        b.answer(f"`{rel}` has {len(lines)} lines. It begins with:\n\n{lines[0]}")
    return ask.format(f=rel)


def list_files(b: Builder) -> str:
    ask = b.rng.choice(
        [
            "What files are in this directory?",
            "List the files here.",
            "ls",
            "What's in this project?",
            "Which files are there?",
            "Show me the project layout.",
        ]
    )
    names = sorted(b.project.files)
    if b.has("glob") and b.rng.random() < 0.4:
        call = b.call("glob", "**/*")
        result = "\n".join(b.path(n) for n in names)
    else:
        call = b.shell(b.rng.choice(["ls", "ls -R", "find . -type f"]), "List files")
        result = "\n".join(
            ("./" + n) if call["function"]["arguments"]["command"].startswith("find") else n
            for n in names
        )
    b.step([call], [result], "I'll list the files in the working directory.")
    b.answer(f"There are {len(names)} files:\n\n" + "\n".join(f"- `{n}`" for n in names))
    return ask


def find_definition(b: Builder) -> str:
    found = [(rel, f) for rel, text in b.project.files.items() for f in functions(text)]
    if not found:
        return list_files(b)
    rel, (name, line, code, _) = b.rng.choice(found)
    ask = b.rng.choice(
        [
            "Where is `{n}` defined?",
            "Find the definition of {n}.",
            "Which file defines {n}?",
            "where's the function {n}",
        ]
    ).format(n=name)
    if b.has("grep"):
        extra = (
            {"output_mode": "content", "-n": True}
            if b.project.tools["grep"][0] == "Grep" and b.rng.random() < 0.6
            else {}
        )
        call = b.call("grep", f"def {name}", extra=extra)
    else:
        call = b.shell(f"grep -rn 'def {name}' .", f"Search for the definition of {name}")
    b.step([call], [f"{rel}:{line}:{code}"], f"I'll search the code for `def {name}`.")
    b.answer(f"`{name}` is defined in `{rel}` at line {line}:\n\n```python\n{code}\n```")
    return ask


def run_tests(b: Builder) -> str:
    ask = b.rng.choice(
        ["Run the tests.", "Do the tests pass?", "run pytest", "Can you run the test suite?"]
    )
    command = b.rng.choice(["python -m pytest -q", "pytest -q", "pytest"])
    n = b.rng.randint(1, 40)
    failed = b.rng.randint(1, min(3, n)) if b.rng.random() < 0.3 else 0
    dots = "." * (n - failed) + "F" * failed
    if failed:
        names = [f"test_{w}" for w in b.rng.sample(MODULES, failed)]
        out = f"{dots} [100%]\n" + "\n".join(f"FAILED tests/test_x.py::{t}" for t in names)
        out += f"\n{failed} failed, {n - failed} passed in {b.rng.random() * 3:.2f}s"
        reply = f"{failed} of {n} tests failed: " + ", ".join(f"`{t}`" for t in names) + "."
    else:
        out = f"{dots} [100%]\n{n} passed in {b.rng.random() * 3:.2f}s"
        reply = f"All {n} tests passed."
    b.step([b.shell(command, "Run the test suite")], [out], "I'll run the test suite.")
    b.answer(reply)
    return ask


def run_command(b: Builder) -> str:
    rel = b.rng.choice(list(b.project.files))
    n = b.project.files[rel].count("\n")
    said = sentences(b.project.files[rel]) or ["done"]
    cases = [
        (
            "What Python version is installed?",
            "python --version",
            "Show the Python version",
            "Python 3.12.3",
            "Python 3.12.3 is installed.",
        ),
        (
            "What directory am I in?",
            "pwd",
            "Print the working directory",
            b.project.cwd,
            f"You are in `{b.project.cwd}`.",
        ),
        (
            f"How many lines does {rel} have?",
            f"wc -l {rel}",
            f"Count lines in {rel}",
            f"{n} {rel}",
            f"`{rel}` has {n} lines.",
        ),
        (
            "Show the git status.",
            "git status --short",
            "Show working tree status",
            f" M {rel}",
            f"One file is modified: `{rel}`.",
        ),
        (f"Run {rel}.", f"python {rel}", f"Run {rel}", said[0], f"It printed:\n\n{said[0]}"),
    ]
    ask, command, description, out, reply = b.rng.choice(cases)
    b.step([b.shell(command, description)], [out], f"I'll run `{command}`.")
    b.answer(reply)
    return ask


def function_source(text: str, line: int) -> str:
    """The definition starting at `line` (1-based), up to the first line indented no deeper."""
    lines = text.splitlines()[line - 1 : line + 40]
    indent = len(lines[0]) - len(lines[0].lstrip())
    end = 1
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
    ):
        end += 1
    return textwrap.dedent("\n".join(lines[:end])).strip() + "\n"


def write_file(b: Builder, pool: list[str]) -> str:
    rel = b.rng.choice(["hello.py", "script.py", "example.py", f"{b.rng.choice(MODULES)}.py"])
    defs = [(t, f) for t in pool[:3] for f in functions(t) if not f[0].startswith("_")]
    if not defs or b.rng.random() < 0.3:
        message = b.rng.choice(["hello world", "Hello, world!", "hi there", "done"])
        ask = f"Create {rel} that prints {message}."
        content = f'print("{message}")\n'
    else:
        text, (name, line, _, _) = b.rng.choice(defs)
        content = function_source(text, line)
        said = sentences(content)
        ask = b.rng.choice(
            [f"Write a file {rel} with a function `{name}`.", f"Create {rel} containing {name}()."]
        )
        if said and b.rng.random() < 0.5:
            ask += f" {said[0]}"
    b.step(
        [b.call("write", b.path(rel), content)],
        [f"File created successfully at: {b.project.cwd}/{rel}"],
        f"I'll create {rel}.",
    )
    b.project.files[rel] = content
    b.answer(b.rng.choice([f"Created `{rel}`.", f"I wrote `{rel}`.", f"Done: `{rel}` is there."]))
    return ask


def edit_file(b: Builder) -> str:
    found = [(rel, f) for rel, t in b.project.files.items() for f in functions(t) if f[2]]
    if not found:
        return read_file(b)
    rel, (name, line, code, _) = b.rng.choice(found)
    new = b.rng.choice(["new_", "do_", "_", ""]) + name + b.rng.choice(["", "_v2", "_impl", "2"])
    if new == name:
        new = name + "_renamed"
    ask = b.rng.choice(["In {f}, rename `{n}` to `{m}`.", "Rename the function {n} in {f} to {m}."])
    if b.rng.random() < 0.6:
        b.step([b.call("read", b.path(rel))], [b.read_result(rel)], f"I'll read {rel} first.")
    updated = code.replace(f"def {name}(", f"def {new}(", 1)
    snippet = f"{b.project.numbered.format(line)}{updated}"
    b.step(
        [b.call("edit", b.path(rel), code, updated)],
        [
            f"The file {b.project.cwd}/{rel} has been updated. Here's the result of running "
            f"`cat -n` on a snippet of the edited file:\n{snippet}"
        ],
        f"I'll replace the definition line of `{name}`.",
    )
    b.answer(f"Renamed `{name}` to `{new}` in `{rel}` (line {line}).")
    return ask.format(f=rel, n=name, m=new)


def chat(b: Builder) -> str:
    ask, reply = b.rng.choice(
        [
            ("hi", "Hello! What would you like to work on?"),
            ("Thanks!", "You're welcome."),
            (
                "What can you do?",
                "I can read, write and edit files, search the code and run "
                "commands in this project. What should I do?",
            ),
            ("Say hello.", "Hello!"),
        ]
    )
    b.answer(reply)
    return ask
