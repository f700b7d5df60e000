"""The tools and system prompts of the synthetic agent conversations (agent_data.py).

Tools are OpenAI function definitions, the shape a server passes to the chat template. The core
capabilities of a coding agent (read, write, edit, shell, glob, grep) come in Claude Code's naming
(Bash, Read, Write, Edit, Glob, Grep) and in the snake-case names other agents use; the rest of a
tool list is padding the model must learn to look past: agent tools that are never called here, and
functions made from documented functions of the corpus.
"""

from __future__ import annotations

import random

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


def string(description: str) -> dict:
    return {"type": "string", "description": description}


# capability -> variants: (tool name, argument names in the order the scenario fills them,
# schema properties, required, short description, usage notes).
CORE: dict[str, list[tuple]] = {
    "read": [
        (
            "Read",
            ("file_path",),
            {
                "file_path": string("The absolute path to the file to read"),
                "offset": {"type": "integer", "description": "The line number to start from"},
                "limit": {"type": "integer", "description": "The number of lines to read"},
            },
            ["file_path"],
            "Reads a file from the local filesystem.",
            [
                "The file_path parameter must be an absolute path, not a relative path.",
                "By default it reads up to 2000 lines starting from the beginning of the file.",
                "Results are returned using cat -n format, with line numbers starting at 1.",
                "You can optionally specify a line offset and limit for long files.",
                "Read a file before you edit it.",
                "If the file does not exist, an error is returned.",
            ],
        ),
        (
            "read_file",
            ("path",),
            {"path": string("Path of the file to read")},
            ["path"],
            "Read the contents of a file.",
            ["Returns the text of the file with line numbers."],
        ),
        (
            "view_file",
            ("path",),
            {"path": string("The file to show")},
            ["path"],
            "Show the contents of a file in the workspace.",
            [],
        ),
    ],
    "write": [
        (
            "Write",
            ("file_path", "content"),
            {
                "file_path": string("The absolute path to the file to write (must be absolute)"),
                "content": string("The content to write to the file"),
            },
            ["file_path", "content"],
            "Writes a file to the local filesystem.",
            [
                "This tool will overwrite the existing file if there is one at the provided path.",
                "If this is an existing file, you must use the Read tool first.",
                "Prefer editing existing files; only create new files when asked to.",
            ],
        ),
        (
            "write_file",
            ("path", "content"),
            {"path": string("Path of the file"), "content": string("Text to write")},
            ["path", "content"],
            "Create or overwrite a file with the given content.",
            [],
        ),
        (
            "create_file",
            ("path", "text"),
            {"path": string("Where to create the file"), "text": string("The file's text")},
            ["path", "text"],
            "Create a new file.",
            [],
        ),
    ],
    "edit": [
        (
            "Edit",
            ("file_path", "old_string", "new_string"),
            {
                "file_path": string("The absolute path to the file to modify"),
                "old_string": string("The text to replace"),
                "new_string": string("The text to replace it with (must differ from old_string)"),
                "replace_all": {
                    "type": "boolean",
                    "default": False,
                    "description": "Replace all occurrences of old_string",
                },
            },
            ["file_path", "old_string", "new_string"],
            "Performs exact string replacements in files.",
            [
                "You must use the Read tool at least once before editing a file.",
                "The edit fails if old_string is not unique in the file; give more context.",
                "Preserve the exact indentation of the text you replace.",
                "Use replace_all to rename a variable across the file.",
            ],
        ),
        (
            "edit_file",
            ("path", "old_str", "new_str"),
            {
                "path": string("File to edit"),
                "old_str": string("Exact text to find"),
                "new_str": string("Replacement text"),
            },
            ["path", "old_str", "new_str"],
            "Replace one exact piece of text in a file.",
            [],
        ),
        (
            "str_replace",
            ("path", "old", "new"),
            {
                "path": string("File path"),
                "old": string("Text to replace"),
                "new": string("New text"),
            },
            ["path", "old", "new"],
            "Replace a string in a file.",
            [],
        ),
    ],
    "shell": [
        (
            "Bash",
            ("command", "description"),
            {
                "command": string("The command to execute"),
                "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
                "description": string("Clear, concise description of what this command does"),
                "run_in_background": {
                    "type": "boolean",
                    "description": "Set to true to run in the background",
                },
            },
            ["command"],
            "Executes a given bash command and returns its output.",
            [
                "The working directory persists between commands.",
                "Always quote file paths that contain spaces with double quotes.",
                "Prefer the dedicated tools for reading, editing and searching files.",
                "You can call multiple tools in a single response when they are independent.",
                "Commands time out after 120000ms unless a timeout is given.",
                "Write a clear description of what the command does in 5-10 words.",
                "Never use interactive flags such as git rebase -i.",
            ],
        ),
        (
            "run_shell_command",
            ("command",),
            {"command": string("Shell command to run")},
            ["command"],
            "Run a shell command and return stdout and stderr.",
            [],
        ),
        (
            "bash",
            ("command",),
            {"command": string("The bash command to run")},
            ["command"],
            "Run commands in a bash shell.",
            ["State is kept between calls."],
        ),
    ],
    "glob": [
        (
            "Glob",
            ("pattern",),
            {
                "pattern": string("The glob pattern to match files against"),
                "path": string("The directory to search in; defaults to the working directory"),
            },
            ["pattern"],
            "Fast file pattern matching tool that works with any codebase size.",
            [
                'Supports glob patterns like "**/*.js" or "src/**/*.ts".',
                "Returns matching file paths sorted by modification time.",
            ],
        ),
        (
            "find_files",
            ("pattern",),
            {"pattern": string("Glob pattern, e.g. **/*.py")},
            ["pattern"],
            "Find files by name pattern.",
            [],
        ),
        (
            "list_files",
            ("path",),
            {"path": string("Directory to list")},
            ["path"],
            "List the files in a directory.",
            [],
        ),
    ],
    "grep": [
        (
            "Grep",
            ("pattern",),
            {
                "pattern": string("The regular expression pattern to search for"),
                "path": string("File or directory to search in"),
                "glob": string('Glob pattern to filter files (e.g. "*.py")'),
                "output_mode": {
                    "type": "string",
                    "enum": ["content", "files_with_matches", "count"],
                    "description": "Output mode; defaults to files_with_matches",
                },
                "-n": {"type": "boolean", "description": "Show line numbers in output"},
                "-i": {"type": "boolean", "description": "Case insensitive search"},
            },
            ["pattern"],
            "A powerful search tool built on ripgrep.",
            [
                "Always use Grep for search tasks rather than grep or rg in Bash.",
                "Supports full regex syntax.",
                'Filter files with the glob parameter (e.g. "*.js") or the type parameter.',
                'Output modes: "content" shows matching lines, "files_with_matches" only paths.',
            ],
        ),
        (
            "search_code",
            ("query",),
            {"query": string("Text or regex to search for")},
            ["query"],
            "Search the codebase for a pattern and return matching lines.",
            [],
        ),
        (
            "grep",
            ("pattern",),
            {
                "pattern": string("Regex to search for"),
                "include": string("Files to include, e.g. *.py"),
            },
            ["pattern"],
            "Search file contents with a regular expression.",
            [],
        ),
    ],
}

# Tools a coding agent offers that no scenario here calls.
EXTRA_NAMES = [
    "Agent",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "NotebookEdit",
    "AskUserQuestion",
    "Skill",
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskUpdate",
    "TaskStop",
    "TaskOutput",
    "SendMessage",
    "ScheduleWakeup",
    "EnterWorktree",
    "ExitWorktree",
    "CronCreate",
    "CronDelete",
    "CronList",
    "ReportFindings",
    "Workflow",
    "KillShell",
    "BashOutput",
    "ExitPlanMode",
    "MultiEdit",
    "ListMcpResources",
    "fetch_url",
    "web_search",
    "update_plan",
    "ask_user",
    "think",
]

AGENT_LINES = [
    "You are an interactive CLI agent that helps users with software engineering tasks.",
    "You are a coding assistant running in the user's terminal.",
    "You are an agent that helps developers read, write and run code in their repository.",
    "You are a helpful assistant with access to tools for working with files and commands.",
    "You are a careful software engineer working inside the user's project.",
]
GUIDANCE = [
    "Use the tools available to you to answer the user's questions.",
    "Be concise: answer in a few sentences unless asked for detail.",
    "Read a file before you change it.",
    "When you need to look at a file, call the tool that reads files instead of guessing.",
    "Prefer the dedicated file tools over shell commands when one fits.",
    "Independent tool calls can be made in parallel in one response.",
    "Refer to code as `file_path:line_number` so the user can find it.",
    "Do not add comments to code unless asked.",
    "After running a command, report what it printed faithfully, failures included.",
    "Never invent file contents: read them.",
    "Follow the conventions of the existing code when you edit it.",
    "Output text is shown to the user as GitHub-flavored markdown in a terminal.",
    "If a tool call is denied, adjust your approach rather than retrying it verbatim.",
    "Keep answers short: the user can ask for more.",
    "When a task is done and verified, say so plainly.",
    "Do not create files unless they are needed for the task.",
    "Use absolute paths when calling file tools.",
    "Run the tests after changing code when the project has tests.",
]
CWD_LABELS = ["Primary working directory", "Working directory", "Current directory", "cwd"]
ROOTS = [
    "/home/{user}/{proj}",
    "/tmp/{proj}",
    "/workspace/{proj}",
    "/Users/{user}/code/{proj}",
    "/srv/{proj}",
    "/root/{proj}",
    "/home/{user}/src/{proj}",
    "/tmp/{proj}/work",
]
USERS = ["alice", "bob", "dev", "sam", "kim", "lee", "maria", "omar", "priya", "yuki", "user"]


def core_tool(capability: str, variant: tuple, rng: random.Random, *, notes: bool) -> dict:
    name, _, properties, required, short, usage = variant
    props = dict(properties)
    # Optional parameters come and go, as they do between agents and versions.
    for key in list(props):
        if key not in required and rng.random() < 0.3:
            del props[key]
    description = short
    if notes and usage:
        picked = [u for u in usage if rng.random() < 0.7] or usage[:1]
        description += "\n\nUsage:\n" + "\n".join(f"- {u}" for u in picked)
    parameters: dict = {"type": "object", "properties": props, "required": list(required)}
    if name[0].isupper() and rng.random() < 0.7:
        parameters = {"$schema": SCHEMA_URL, **parameters, "additionalProperties": False}
    return function(name, description, parameters)


def function(name: str, description: str, parameters: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def system_prompt(rng: random.Random, cwd: str, padding: list[str]) -> str:
    """A coding agent's system prompt: who it is, some guidance, its environment."""
    lines = [rng.choice(AGENT_LINES)]
    guidance = rng.sample(GUIDANCE, rng.randint(0, 8))
    if guidance:
        lines.append("\n".join(f" - {g}" for g in guidance))
    for text in padding:  # long prompts: notes, memory, conventions
        heading = rng.choice(["# Notes", "# Memory", "# Project conventions", "# Reference"])
        lines.append(f"{heading}\n{text}")
    git = rng.choice(["true", "false", "yes", "no"])
    env = [
        f" - {rng.choice(CWD_LABELS)}: {cwd}",
        f" - Is a git repository: {git}",
        f" - Platform: {rng.choice(['linux', 'darwin'])}",
        f" - Today's date: 2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    ]
    rng.shuffle(env)
    header = rng.choice(["# Environment", "<env>", "Environment:"])
    lines.append(f"{header}\n" + "\n".join(env) + ("\n</env>" if header == "<env>" else ""))
    return "\n\n".join(lines)
