"""`moe chat [MODEL]`: a multi-turn conversation in the terminal.

Every turn sends the whole conversation; the Session's prefix cache recognises the part it has
already seen, so only the new message is prefilled."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._common import (
    CapacityOpt,
    HostMemoryOpt,
    KVBitsOpt,
    MemoryOpt,
    MissOpt,
    ModelArg,
    PolicyOpt,
    ProfileOpt,
    err_console,
    human_bytes,
    open_session,
    user_errors,
)

HELP = "commands: /reset (forget the conversation), /stats, /exit (or Ctrl-D)"


def chat(
    model: ModelArg = None,
    system: Annotated[
        str | None, typer.Option("--system", help="System message.", show_default=False)
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", min=1)] = 1024,
    temp: Annotated[float, typer.Option("--temp", min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", show_default=False)] = None,
    memory: MemoryOpt = None,
    host_memory: HostMemoryOpt = None,
    capacity: CapacityOpt = None,
    profile: ProfileOpt = None,
    policy: PolicyOpt = None,
    miss: MissOpt = "exact",
    kv_bits: KVBitsOpt = None,
) -> None:
    """Chat with a model in the terminal."""
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
        err_console.print(f"[bold]{session.model_id}[/] ready; {HELP}")
        start = [{"role": "system", "content": system}] if system else []
        messages = list(start)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                sys.stdout.write("\n")
                break
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                messages = list(start)
                err_console.print("conversation cleared")
                continue
            if text == "/stats":
                print_stats(session.stats())
                continue
            if text.startswith("/"):
                err_console.print(f"unknown command {text.split()[0]}; {HELP}")
                continue
            messages.append({"role": "user", "content": line})
            reply = answer(
                session, messages, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed
            )
            messages.append({"role": "assistant", "content": reply})


def answer(session, messages: list[dict], **sampling) -> str:
    """Stream one reply to stdout; Ctrl-C stops it early and keeps what was said."""
    pieces = []
    try:
        for response in session.stream(
            messages,
            max_tokens=sampling["max_tokens"],
            temperature=sampling["temp"],
            top_p=sampling["top_p"],
            seed=sampling["seed"],
        ):
            pieces.append(response.text)
            sys.stdout.write(response.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    sys.stdout.write("\n")
    return "".join(pieces)


def print_stats(stats: dict) -> None:
    s = stats.get("session", {})
    err_console.print(
        f"requests {s.get('requests', 0)}, prompt tokens {s.get('prompt_tokens', 0)} "
        f"({s.get('prefix_tokens_reused', 0)} reused from the prefix cache), generated "
        f"{s.get('generated_tokens', 0)}; experts {stats['hit_rate']:.1%} hit rate, "
        f"{stats['bytes_read'] / 1e6:.1f} MB read; peak memory {human_bytes(stats['peak_memory'])}"
    )
