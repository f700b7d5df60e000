"""`moe serve [MODEL]`: the OpenAI- and Anthropic-compatible HTTP server over one model.

The bind address and the port are checked before the model loads, so a mistake costs no time.
Ctrl-C and SIGTERM stop the server cleanly: no new requests, queued ones answered with an error,
the running ones given `--grace` seconds (then ended with the API's error event), the resident
experts saved, exit code 0."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Annotated, Any

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
    describe_capacity,
    err_console,
    fail,
    human_bytes,
    open_session,
    parse_memory,
    user_errors,
)
from ._distributed import DistributedOpt, RankTimeoutOpt, SplitOpt, serve_distributed


def serve(
    model: ModelArg = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MOE_API_KEY",
            help="Key clients must send; required to listen beyond loopback.",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=1,
            show_default=False,
            help="Tokens a request generates when it does not say how many (default: 512).",
        ),
    ] = None,
    max_context: Annotated[
        int | None,
        typer.Option(
            "--max-context",
            min=1,
            help=(
                "Context limit in tokens, prompt and answer together (default: the model's "
                "positions, or what an eighth of the memory budget holds)."
            ),
            show_default=False,
        ),
    ] = None,
    queue: Annotated[
        int,
        typer.Option(
            "--queue",
            min=0,
            help=(
                "Requests that may wait behind the running ones; more get 429/529 with when "
                "to retry."
            ),
        ),
    ] = 8,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            min=1,
            help=(
                "Requests decoded together, at most, each token for token as it would run "
                "alone; 1: one at a time."
            ),
        ),
    ] = 8,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="Seconds a running request may take to finish on SIGTERM or Ctrl-C.",
        ),
    ] = 5.0,
    memory: MemoryOpt = None,
    host_memory: HostMemoryOpt = None,
    capacity: CapacityOpt = None,
    profile: ProfileOpt = None,
    policy: PolicyOpt = None,
    miss: MissOpt = "exact",
    kv_bits: KVBitsOpt = None,
    disk_mbps: Annotated[
        float | None,
        typer.Option(
            "--disk-mbps",
            min=0.001,
            help="Disk read speed in MB/s the live page compares reads with (default: measure it).",
            show_default=False,
        ),
    ] = None,
    prompt_cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--prompt-cache-dir",
            help="Where prompt caches are kept across restarts (default: ~/.cache/moe/prompts).",
            show_default=False,
        ),
    ] = None,
    prompt_cache_size: Annotated[
        str,
        typer.Option(
            "--prompt-cache-size",
            help="Size limit of that directory, least recently used files deleted first; 0: "
            "keep prompt caches in memory only.",
        ),
    ] = "8GB",
    prompt_cache_memory: Annotated[
        str | None,
        typer.Option(
            "--prompt-cache-memory",
            help="Memory for prompt caches of other conversations, taken from the budget "
            "(default: a sixteenth of it, at most four full contexts); 0: only the last one.",
            show_default=False,
        ),
    ] = None,
    distributed: DistributedOpt = False,
    split: SplitOpt = None,
    rank_timeout: RankTimeoutOpt = 10.0,
) -> None:
    """Serve a model over the OpenAI and Anthropic HTTP APIs, with a live page at /."""
    if distributed:
        with user_errors():
            host_tier = (
                {"host_memory": parse_memory(host_memory, option="--host-memory")}
                if host_memory is not None
                else {}
            )
        return serve_distributed(
            model,
            host=host,
            port=port,
            api_key=api_key,
            limits={"max_tokens_default": max_tokens} if max_tokens else {},
            memory=memory,
            split=split,
            rank_timeout=rank_timeout,
            options=dict(
                capacity=capacity,
                profile=profile,
                policy=policy,
                miss=miss,
                kv_bits=kv_bits,
                max_context=max_context,
                **host_tier,
            ),
        )
    with user_errors():
        import moe_server
        from moe_runtime import default_cache_dir

        moe_server.check_bind(host, api_key)
        check_port(host, port)
        session = open_session(
            model,
            memory=memory,
            host_memory=host_memory,
            capacity=capacity,
            profile=profile,
            policy=policy,
            miss=miss,
            kv_bits=kv_bits,
            max_context=max_context,
            prompt_cache_dir=prompt_cache_dir or default_cache_dir() / "prompts",
            prompt_cache_disk=prompt_cache_size,
            prompt_cache_memory=prompt_cache_memory,
        )
    with session:
        if disk_mbps is None:
            disk_mbps = measure_disk_for(session)
        announce(session, host, port, disk_mbps)
        err_console.print(f"  batch: up to {batch} requests decoded together")
        limits: dict[str, Any] = {
            "max_tokens_default": max_tokens,
            "max_queue": queue,
            "batch": batch,
        }
        # uvicorn shuts down on SIGINT/SIGTERM, then re-raises the signal to the handler it found;
        # finding one that ignores it lets a clean shutdown end with exit code 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        with user_errors():
            moe_server.serve(
                session,
                host=host,
                port=port,
                api_key=api_key,
                disk_mb_s=disk_mbps,
                grace=grace,
                **{name: value for name, value in limits.items() if value is not None},
            )
    err_console.print("stopped")


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, when the port is taken, instead of after loading the model."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            fail(f"cannot listen on {host}:{port}: {e.strerror or e}")


def measure_disk_for(session) -> float | None:
    """The disk's read speed for this checkpoint's experts (as `moe inspect` measures it)."""
    from ._disk import measure_disk

    try:
        return measure_disk([layer.map for layer in session.handle.layers])
    except OSError as e:  # the page then shows reads without the disk's line
        err_console.print(f"[yellow]warning:[/] could not measure the disk: {e}", markup=True)
        return None


def announce(session, host: str, port: int, disk_mbps: float | None = None) -> None:
    """Where the server listens and what it holds in memory."""
    handle = session.handle
    budget = handle.plan
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"[bold]{session.model_id}[/] on http://{shown}:{port}/v1")
    err_console.print(f"  live page: http://{shown}:{port}/")
    err_console.print(f"  experts: {describe_capacity(handle.capacity, handle.num_experts)}")
    memory = human_bytes(budget.memory) if budget.memory else "not set (capacity given)"
    err_console.print(f"  memory budget: {memory} ({budget.backend})")
    mode = "exact" if handle.miss == "exact" else f"{handle.miss} (LOSSY)"
    err_console.print(f"  mode: {mode}")
    err_console.print(f"  context: {session.max_context} tokens ({session.kv.reason})")
    cache = session.stats()["session"]["prompt_cache"]
    kept = f"{human_bytes(cache['memory_limit'])} in memory"
    if "disk_dir" in cache:
        kept += f", {human_bytes(cache['disk_limit'])} in {cache['disk_dir']}"
    err_console.print(f"  prompt caches: {kept}")
    if disk_mbps is not None:
        err_console.print(f"  disk: {disk_mbps:.0f} MB/s reading experts")
