"""`moe generate [MODEL] PROMPT`: stream one completion to stdout.

With one positional argument it is the prompt and the model is the shipped demo model; with two,
the first is the model. `-` as the prompt reads it from stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    CapacityOpt,
    HostMemoryOpt,
    KVBitsOpt,
    MemoryOpt,
    MissOpt,
    PolicyOpt,
    ProfileOpt,
    err_console,
    fail,
    human_bytes,
    open_session,
    user_errors,
)


def generate(
    first: Annotated[
        str | None,
        typer.Argument(
            metavar="[MODEL]",
            help="Model directory or Hugging Face name, before the prompt; the shipped demo model "
            "when only a prompt is given.",
            show_default=False,
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(
            metavar="PROMPT", help="The prompt; '-' reads it from stdin.", show_default=False
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1)] = 256,
    temp: Annotated[float, typer.Option("--temp", min=0.0, help="Sampling temperature.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", show_default=False)] = None,
    chat: Annotated[
        bool | None,
        typer.Option(
            "--chat/--raw",
            help="Wrap the prompt in the chat template, or send it as raw text "
            "(default: chat when the model has a template).",
            show_default=False,
        ),
    ] = None,
    memory: MemoryOpt = None,
    host_memory: HostMemoryOpt = None,
    capacity: CapacityOpt = None,
    profile: ProfileOpt = None,
    policy: PolicyOpt = None,
    miss: MissOpt = "exact",
    kv_bits: KVBitsOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print speed, hit rate and memory to stderr.")
    ] = False,
) -> None:
    """Generate text from a prompt and stream it to stdout.

    `moe generate PROMPT` uses the shipped demo model; `moe generate MODEL PROMPT` the given one.
    """
    if first is None:
        fail("no prompt: moe generate PROMPT, or moe generate MODEL PROMPT ('-' reads stdin)", 2)
    model, prompt = (None, first) if second is None else (first, second)
    if second is None and _names_a_model(first):
        fail(f"no prompt after the model {first}: moe generate MODEL PROMPT ('-' reads stdin)", 2)
    if prompt == "-":
        prompt = sys.stdin.read()
    with user_errors():
        session = open_session(
            model,
            memory=memory,
            host_memory=host_memory,
            capacity=capacity,
            profile=profile,
            policy=policy,
            miss=miss,
            kv_bits=kv_bits,
        )
        with session:
            use_chat = chat if chat is not None else session.tokenizer.has_chat_template
            request = [{"role": "user", "content": prompt}] if use_chat else prompt
            last = None
            for last in session.stream(
                request, max_tokens=max_tokens, temperature=temp, top_p=top_p, seed=seed
            ):
                sys.stdout.write(last.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            if verbose and last is not None:
                print_stats(last, session.stats())


def _names_a_model(text: str) -> bool:
    """A lone argument that is a model directory (or `demo`) is a model whose prompt was left
    out, not a prompt: running the demo model on a path helps nobody."""
    return text == "demo" or (Path(text).expanduser() / "config.json").is_file()


def print_stats(last, stats: dict) -> None:
    """The numbers a user tunes `--memory` and `--capacity` by, on stderr."""
    err = err_console.print
    err(
        f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s; "
        f"generation: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s"
    )
    err(
        f"experts: {stats['hit_rate']:.1%} hit rate ({stats['hits']} hits, {stats['misses']} "
        f"misses), {stats['bytes_read'] / 1e6:.1f} MB read at {stats['read_mb_per_s']:.0f} MB/s; "
        f"mode {stats['miss']}"
    )
    if stats.get("miss") == "lowbit":
        bits = stats["budget"]["lowbit_bits"]
        err(
            f"low-bit: {stats['lowbit']} expert choices computed from {bits}-bit copies "
            f"(--miss lowbit is LOSSY; the copies take {human_bytes(sum(stats['budget']['lowbit_bytes']))})"
        )
    elif stats.get("lossy"):
        err(
            f"skipped: {stats['skipped']} expert choices that were not resident "
            f"(--miss {stats['miss']} is LOSSY)"
        )
    err(f"peak memory: {human_bytes(stats['peak_memory'])}")
    # Which experts start resident changes a lossy run's output: say where they came from.
    warm = stats.get("session", {}).get("warm_start", {})
    if not warm.get("enabled"):
        err("warm start: off")
    elif warm["restored"]:
        err(f"warm start: restored from {warm['path']}", soft_wrap=True)
    else:
        err(
            f"warm start: cold (nothing usable at {warm['path']}; saved there at exit)",
            soft_wrap=True,
        )
