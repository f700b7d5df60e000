"""`moe profile MODEL`: run prompts through a model, record which experts each layer routes to,
and write the profile (and the trace) that `--profile` starts a session from.

`moe profile simulate TRACE`: replay a recorded trace under cache policies and capacities and show
each one's hit rate next to Belady's offline optimum."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ._common import (
    CapacityOpt,
    MemoryOpt,
    ModelArg,
    err_console,
    fail,
    open_session,
    progress_bar,
    user_errors,
)


class _DefaultRecord(TyperGroup):
    """`moe profile [MODEL] ...` means `moe profile record [MODEL] ...`; `simulate` is the other
    one. Only the group's own `--help` stays with the group."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["record", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultRecord,
    no_args_is_help=True,
    help="Record a model's expert routing into a profile: `moe profile [MODEL] --out p.json "
    "--preset coding` (the same as `moe profile record ...`); or replay a recorded trace under "
    "cache policies: `moe profile simulate TRACE`.",
)


@app.command("record")
def record(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the profile (JSON).")],
    model: ModelArg = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="JSON list of prompts (text or message lists), or a text file with "
            "one prompt per line.",
            show_default=False,
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset", help="Shipped prompts: coding, chat, tools or mixed.", show_default=False
        ),
    ] = None,
    tokens: Annotated[
        int, typer.Option("--tokens", min=1, help="Tokens generated per prompt.")
    ] = 64,
    trace_out: Annotated[
        Path | None,
        typer.Option("--trace", help="Also write the routing trace (.npz).", show_default=False),
    ] = None,
    memory: MemoryOpt = None,
    capacity: CapacityOpt = None,
) -> None:
    """Run prompts through MODEL and write its routing profile."""
    if (prompts is None) == (preset is None):
        fail("give --prompts FILE or --preset NAME (one of them)", code=2)
    with user_errors():
        from moe_profiles import Profile, TraceRecorder, load_preset_requests

        requests: list[tuple[Any, Any]]
        if preset is not None:
            requests, label = [(p.prompt, p.tools) for p in load_preset_requests(preset)], preset
        else:
            assert prompts is not None  # one of the two, checked above
            requests, label = [(p, None) for p in read_prompts(prompts)], prompts.name
        # Every prompt must run through the model in full for its routing to be recorded.
        session = open_session(model, memory=memory, capacity=capacity, prefix_cache=False)
        with session:
            fingerprint = session.fingerprint
            recorder = TraceRecorder.attach(session.handle, fingerprint=fingerprint)
            with progress_bar() as progress:
                task = progress.add_task("Profiling", total=len(requests))
                for i, (prompt, tools) in enumerate(requests):
                    recorder.segment(f"{label}[{i}]")
                    session.generate(prompt, max_tokens=tokens, tools=tools)
                    progress.advance(task)
            session.handle.unobserve(recorder)
        trace = recorder.trace()
        source = {"model": session.model_id, "prompts": preset or str(prompts), "tokens": tokens}
        profile = Profile.from_trace(trace, source=source)
        profile.save(out)
        if trace_out is not None:
            trace.save(trace_out)
    err_console.print(
        f"profile of {session.model_id} ({trace.num_tokens} tokens, {len(requests)} prompts) "
        f"written to {out}" + (f"; trace to {trace_out}" if trace_out else "")
    )


def read_prompts(path: Path) -> list:
    """A JSON list (or {"prompts": [...]}) of text or message lists; otherwise one line each."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        items = doc.get("prompts") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not all(isinstance(p, str | list) for p in items):
            raise ValueError(f"{path}: expected a list of prompts (strings or message lists)")
        prompts = items
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


@app.command("simulate")
def simulate(
    trace: Annotated[Path, typer.Argument(help="Routing trace (.npz) from `moe profile --trace`.")],
    capacity: Annotated[
        str,
        typer.Option(
            "--capacity", help="Slots per layer, comma-separated: 8,16 or 0.25 (a fraction)."
        ),
    ] = "0.125,0.25,0.5",
    policy: Annotated[
        str, typer.Option("--policy", help="Policies, comma-separated.")
    ] = "lru,lfuda,s3fifo,markov",
    held_out: Annotated[
        float,
        typer.Option("--held-out", min=0.05, max=0.95, help="Share of the trace's end held out."),
    ] = 1 / 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
) -> None:
    """Replay TRACE under each policy and capacity, next to Belady's optimum: on the part a
    choice would be fitted on and on the held-out end of the trace, side by side."""
    with user_errors():
        from moe_profiles import Trace, compare_held_out

        capacities = [_capacity(c) for c in capacity.split(",") if c.strip()]
        policies = [p.strip() for p in policy.split(",") if p.strip()]
        rows = compare_held_out(Trace.load(trace), capacities, policies, held_out=held_out)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    head = f"{'hit rate':>9} {'belady':>7} {'ratio':>6}"
    typer.echo(f"{'':>19} {'fit':^24}   {'held out':^24}")
    typer.echo(f"{'capacity':>10} {'policy':>8} {head}   {head}")
    for row in rows:
        typer.echo(
            f"{row['capacity']!s:>10} {row['policy']:>8} "
            f"{row['fit_hit_rate']:>9.1%} {row['fit_belady_hit_rate']:>7.1%} {row['fit_ratio']:>6.2f}   "
            f"{row['held_out_hit_rate']:>9.1%} {row['held_out_belady_hit_rate']:>7.1%} "
            f"{row['held_out_ratio']:>6.2f}"
        )


def _capacity(text: str) -> int | float:
    text = text.strip()
    try:
        value = float(text) if "." in text else int(text)
    except ValueError:
        raise ValueError(f"--capacity: {text!r} is neither a slot count nor a fraction") from None
    if value <= 0 or (isinstance(value, float) and value > 1):
        raise ValueError(f"--capacity: {text!r} must be a positive count or a fraction in (0, 1]")
    return value
