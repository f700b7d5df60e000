"""Claude Code against moe: record its requests, or run a session end to end.

    uv run python benchmarks/claude_code.py run [--model DIR] [--claude PATH]
    uv run python benchmarks/claude_code.py record OUT_DIR [--claude PATH]

Needs Node: without --claude it installs `@anthropic-ai/claude-code` with npm into a cache
folder once. Claude Code runs non-interactively (`claude -p`) in a scratch project holding a
notes file, with telemetry off and a dummy API key, allowed to use the Read tool only.

`run` starts `moe serve` on MODEL (default: the shipped demo model) and drives two turns: the
first asks what the notes file says (the model should call Read, Claude Code executes it and
sends the tool_result back), the second continues the session (`--continue`). A recording proxy
in front of the server keeps every request and response (also appended, as each finishes, to
requests.jsonl in the scratch project, whose path is printed); the JSON written to
benchmarks/results/claude_code.json says, per turn, how many requests Claude Code made, their
status codes, which tools the model called, whether a tool_result went back, the text answered,
and whether Claude Code left a request before its end (it aborts a stream after 5 minutes
without an event). `--project DIR` runs Claude Code in DIR instead of a fresh temporary folder
(the demo model, trained on working directories like /tmp/NAME or /home/USER/NAME, reads
/tmp/moe-claude-f18821sk/notes.txt as /tmp/moe-app/notes.txt; given /tmp/demo it copies the
path); `--max-turns N` sets CLAUDE_CODE_MAX_TURNS.

`--tiny POSITIONS` serves instead a random-weight qwen3_moe from moe-testing (its chat
template has Qwen's tool calls and thinking) with its positions raised to POSITIONS, enough for
Claude Code's prompt (~54k tokens with that tokenizer's 512-token vocabulary). Such a model
writes random tokens and never calls a tool on its own: that run shows every request accepted
and each turn completed, not a tool executed. `--max-output-tokens N` sets Claude Code's
CLAUDE_CODE_MAX_OUTPUT_TOKENS (its default asks for 32000 tokens, which a random model fills up
to the context); `--tools Read` offers it only the Read tool (with the demo model's tokenizer a
first prompt of ~2.4k tokens instead of ~23k with all 24 tools). API_TIMEOUT_MS is raised to
an hour: Claude Code otherwise abandons a request after 10 minutes; so is
CLAUDE_STREAM_IDLE_TIMEOUT_MS (5 minutes without a stream event other than a ping).

`record` answers Claude Code from a scripted fake (a Read call, then a text answer) and writes
its first request and the follow-up that carries the tool_result as JSON fixtures, with
machine-specific text (paths, user, OS version, ids) replaced by fixed stand-ins.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = "The expert cache keeps 4 slots per layer.\n"
KEPT_HEADERS = ("anthropic-beta", "anthropic-version", "user-agent", "x-app", "content-type")


def claude_binary(given: str | None) -> str:
    if given:
        return given
    found = shutil.which("claude")
    if found:
        return found
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moe" / "claude-code"
    binary = cache / "node_modules" / ".bin" / "claude"
    if not binary.exists():
        if shutil.which("npm") is None:
            sys.exit("claude_code.py needs Node and npm (or --claude PATH)")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "@anthropic-ai/claude-code"], cwd=cache, check=True
        )
    return str(binary)


def sanitize(text: str, project: Path) -> str:
    """Replace what names this machine, its user or this run with fixed stand-ins."""
    home = str(Path.home())
    slug = re.sub(r"[^A-Za-z0-9]", "-", str(project))
    for old, new in (
        (str(project.resolve()), "/home/user/project"),
        (str(project), "/home/user/project"),
        (slug, "-home-user-project"),
        (home, "/home/user"),
        (platform.node(), "host"),
    ):
        text = text.replace(old, new)
    text = re.sub(r"OS Version: [^\\\"]*", "OS Version: Linux 6.1.0", text)
    text = re.sub(r'device_id\\?":\\?"[0-9a-f]+', 'device_id\\\\":\\\\"' + "0" * 64, text)
    text = re.sub(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "00000000-0000-4000-8000-000000000000",
        text,
    )
    return re.sub(r"(Today's date is )\d{4}-\d{2}-\d{2}", r"\g<1>2026-01-01", text)


class Recorder(BaseHTTPRequestHandler):
    """Keeps each request; forwards it to `upstream` (run) or answers from a script (record)."""

    upstream: str | None = None
    records: list[dict]
    notes_path: str = ""
    log: Path | None = None  # each finished record is appended here as one JSON line

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        record = {
            "status": 200,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items() if k.lower() in KEPT_HEADERS},
            "body": json.loads(body or b"{}"),
        }
        self.records.append(record)
        start = time.perf_counter()
        if self.upstream:
            data = self._forward(body, record)
        else:
            data = self._script()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(data)
        record["seconds"] = round(time.perf_counter() - start, 1)
        record["response"] = data.decode("utf-8", "replace")
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _forward(self, body: bytes, record: dict) -> bytes:
        """Pass the request on and stream the answer back as it comes (HTTP/1.0: the body
        ends when the connection closes). A client that leaves mid-answer (Claude Code aborts
        a stream that is idle for 5 minutes) closes the server's connection too, so the server
        stops generating for nobody."""
        host, port = self.upstream.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=3600)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        connection.request("POST", self.path, body=body, headers=headers)
        response = connection.getresponse()
        record["status"] = response.status
        self.send_response(response.status)
        self.send_header("content-type", response.getheader("content-type", "application/json"))
        self.end_headers()
        data = bytearray()
        try:
            while chunk := response.read1(65536):
                data += chunk
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError as e:
            record["client_left"] = f"{type(e).__name__}: {e}"
        finally:
            connection.close()
        return bytes(data)

    def _script(self) -> bytes:
        """A Read call of the notes file first, a text answer once the tool_result is back."""
        request = self.records[-1]["body"]
        answered = any(
            isinstance(m.get("content"), list)
            and any(b.get("type") == "tool_result" for b in m["content"])
            for m in request.get("messages", [])
        )
        message = {
            "id": f"msg_{len(self.records)}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 0},
        }
        if answered:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": "The notes say the cache keeps 4 slots."}
            stop = "end_turn"
        else:
            block = {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {}}
            arguments = json.dumps({"file_path": self.notes_path})
            delta = {"type": "input_json_delta", "partial_json": arguments}
            stop = "tool_use"
        events = [
            ("message_start", {"message": message}),
            ("content_block_start", {"index": 0, "content_block": block}),
            ("content_block_delta", {"index": 0, "delta": delta}),
            ("content_block_stop", {"index": 0}),
            ("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": 5}}),
            ("message_stop", {}),
        ]
        return "".join(
            f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"
            for kind, data in events
        ).encode()


def start_recorder(
    upstream: str | None, notes: Path, log: Path | None = None
) -> tuple[ThreadingHTTPServer, list[dict]]:
    records: list[dict] = []
    fields = {"upstream": upstream, "records": records, "notes_path": str(notes), "log": log}
    handler = type("Handler", (Recorder,), fields)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, records


def claude(
    binary: str,
    url: str,
    project: Path,
    prompt: str,
    *more: str,
    timeout: int,
    env: dict | None = None,
    tools: str | None = None,
) -> dict:
    env = {
        **(env or {}),
        **os.environ,
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-dummy-key-for-a-local-server",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    command = [binary, "-p", prompt, *(["--tools", tools] if tools is not None else [])]
    command += ["--allowedTools", "Read", "--model", "moe", *more]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, timeout=timeout)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:  # recorded as a turn that did not finish
        code, stdout, stderr = None, e.stdout, e.stderr
    return {
        "command": ["claude", *command[1:]],
        "exit_code": code,
        "timed_out": code is None,
        "seconds": round(time.perf_counter() - start, 1),
        "output": (stdout or b"").decode("utf-8", "replace").strip()[-2000:],
        "stderr": (stderr or b"").decode("utf-8", "replace").strip()[-2000:],
    }


def project_dir(given: str | None = None) -> Path:
    project = Path(given) if given else Path(tempfile.mkdtemp(prefix="moe-claude-"))
    project.mkdir(parents=True, exist_ok=True)
    (project / "notes.txt").write_text(NOTES)
    return project


def record(args) -> None:
    binary = claude_binary(args.claude)
    project = project_dir()
    server, records = start_recorder(None, project / "notes.txt")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    result = claude(binary, url, project, "What does notes.txt say?", timeout=300)
    server.shutdown()
    messages = [r for r in records if r["path"].startswith("/v1/messages")]
    if result["exit_code"] != 0 or len(messages) < 2:
        sys.exit(f"claude did not finish its turn: {result}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    for name, item in (("first_request", messages[0]), ("tool_result_request", messages[1])):
        item = {k: item[k] for k in ("path", "headers", "body")} | {"claude_code": version}
        text = sanitize(json.dumps(item, indent=1, ensure_ascii=False), project)
        (out / f"{name}.json").write_text(text + "\n")
    print(f"wrote {out}/first_request.json and tool_result_request.json ({version})")


def summarize(records: list[dict]) -> dict:
    """Per request: status, the tools the model called, whether it carried a tool_result."""
    out = []
    for r in records:
        if not r["path"].startswith("/v1/messages") or "count_tokens" in r["path"]:
            continue
        called = re.findall(r'"type": ?"tool_use"[^}]*"name": ?"([^"]+)"', r["response"])
        results = [
            b.get("content")
            for m in r["body"].get("messages", [])
            if isinstance(m.get("content"), list)
            for b in m["content"]
            if b.get("type") == "tool_result"
        ]
        text = "".join(
            re.findall(r'"type": ?"text_delta", ?"text": ?"((?:[^"\\]|\\.)*)"', r["response"])
        )
        out.append(
            {
                "status": r["status"],
                "seconds": r.get("seconds"),
                "stop_reason": (
                    re.findall(r'"stop_reason": ?"([a-z_]+)"', r["response"]) or [None]
                )[-1],
                "tools_called": called,
                "tool_results_sent": len(results),
                "stream": r["body"].get("stream"),
                "tools_offered": len(r["body"].get("tools", [])),
                "text": json.loads(f'"{text}"')[:500],
                **({"client_left": r["client_left"]} if "client_left" in r else {}),
            }
        )
    return {"requests": out}


def tiny_model(positions: int, out: Path) -> Path:
    """A moe-testing checkpoint whose config allows `positions` tokens (RoPE has no limit)."""
    from moe_testing import CheckpointSpec, build_checkpoint

    path = build_checkpoint(CheckpointSpec("qwen3_moe", num_layers=2, num_experts=8, top_k=2), out)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def run(args) -> None:
    binary = claude_binary(args.claude)
    project = project_dir(args.project)
    port = args.port
    model = args.model
    serve = [sys.executable, "-m", "moe_cli.main", "serve", "--port", str(port)]
    if args.tiny:
        model = str(tiny_model(args.tiny, project / "model"))
        serve += ["--max-context", str(args.tiny)]
    serve += [model] if model else []
    serve += [*args.serve_args]
    # Claude Code gives up on a request after 10 minutes; a CPU prefills its prompt slower.
    # It also aborts a stream after 5 minutes without an event (pings do not count), and a long
    # prompt's prefill on a CPU sends none.
    env = {
        "API_TIMEOUT_MS": str(args.api_timeout_ms),
        "CLAUDE_STREAM_IDLE_TIMEOUT_MS": str(args.api_timeout_ms),
    }
    if args.max_output_tokens:
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(args.max_output_tokens)
    if args.max_turns:
        env["CLAUDE_CODE_MAX_TURNS"] = str(args.max_turns)
    log = open(project / "serve.log", "w")  # noqa: SIM115 - kept open while the server runs
    server_process = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or server_process.poll() is not None:
                sys.exit(f"moe serve did not start; see {project / 'serve.log'}")
            time.sleep(1)
        requests_log = project / "requests.jsonl"  # each request and answer, as they finish
        print(f"requests: {requests_log}", flush=True)
        proxy, records = start_recorder(f"127.0.0.1:{port}", project / "notes.txt", requests_log)
        url = f"http://127.0.0.1:{proxy.server_address[1]}"
        turns = []
        for prompt, more in (
            ("What does notes.txt say? Read it.", ()),
            ("Thanks. In one word, how many slots?", ("--continue",)),
        ):
            before = len(records)
            result = claude(
                binary,
                url,
                project,
                prompt,
                *more,
                timeout=args.turn_timeout,
                env=env,
                tools=args.tools,
            )
            turns.append({"prompt": prompt, **result, **summarize(records[before:])})
        proxy.shutdown()
    finally:
        server_process.terminate()
        server_process.wait(30)
    report = {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "model": (
            f"moe-testing qwen3_moe, random weights, {args.tiny} positions"
            if args.tiny
            else args.model or "demo"
        ),
        "serve": ["moe", *(("MODEL" if a == model and args.tiny else a) for a in serve[3:])],
        "project": str(project) if args.project else "a new temporary folder",
        "claude_env": env,
        "turns": turns,
        "tool_executed": any(t["tool_results_sent"] for turn in turns for t in turn["requests"]),
        "all_accepted": all(t["status"] == 200 for turn in turns for t in turn["requests"]),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("tool_executed", "all_accepted")}))
    print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claude", help="the claude binary (default: PATH, else npm install)")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="write fixtures from a scripted fake")
    rec.add_argument("out")
    go = commands.add_parser("run", help="a two-turn session against moe serve")
    go.add_argument("--model", help="checkpoint folder (default: the demo model)")
    go.add_argument("--tiny", type=int, metavar="POSITIONS", help="serve a random-weight model")
    go.add_argument("--max-output-tokens", type=int, help="CLAUDE_CODE_MAX_OUTPUT_TOKENS")
    go.add_argument("--tools", help="Claude Code's --tools (default: all 24 of its tools)")
    go.add_argument(
        "--project", help="the folder Claude Code runs in (default: a new temporary one)"
    )
    go.add_argument("--max-turns", type=int, help="CLAUDE_CODE_MAX_TURNS")
    go.add_argument("--api-timeout-ms", type=int, default=3_600_000, help="API_TIMEOUT_MS")
    go.add_argument("--port", type=int, default=8791)
    go.add_argument("--json", default=str(ROOT / "benchmarks/results/claude_code.json"))
    go.add_argument("--startup-timeout", type=int, default=600)
    go.add_argument("--turn-timeout", type=int, default=3600)
    go.add_argument("serve_args", nargs="*", help="more `moe serve` options, after --")
    args = parser.parse_args()
    {"record": record, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
