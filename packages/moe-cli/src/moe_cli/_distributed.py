"""`moe serve MODEL --distributed`: one model split across hosts, started on every host by
`mlx.launch` (ring backend). Rank 0 serves the APIs, at once, and says on `/health` what it is
waiting for; the other ranks follow its requests.

    mlx.launch --hostfile hosts.json -- moe serve MODEL --distributed --memory 24GB
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer

from ._common import err_console, fail, parse_memory, user_errors

DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed",
        help="Run as one rank of a model split across hosts, started by mlx.launch "
        "(rank 0 serves, the others follow).",
    ),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="With --distributed: decoder layers per rank, in rank order, e.g. 10,14 (rank 0 "
        "runs the last ones); default: even, or by each rank's --memory when it lists one per rank.",
        show_default=False,
    ),
]
RankTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--rank-timeout",
        min=0.5,
        help="With --distributed: seconds of silence after which a host counts as gone.",
    ),
]


def serve_distributed(
    model: str | None,
    *,
    host: str,
    port: int,
    api_key: str | None,
    limits: dict,
    memory: str | None,
    split: str | None,
    rank_timeout: float,
    options: dict[str, Any],
) -> None:
    with user_errors():
        from moe_runtime import Leader, Topology, follow, plan_split

        topology = Topology.from_env()
        memories = [parse_memory(m) for m in memory.split(",")] if memory else [None]
        if len(memories) not in (1, topology.size):
            fail(f"--memory lists {len(memories)} budgets for {topology.size} hosts")
        layers = _layers(split, topology.size)
        if layers is None and len(memories) > 1:
            layers = plan_split(_num_layers(model), [m or 0 for m in memories])  # all given
        session = dict(
            options,
            memory=memories[topology.rank if len(memories) > 1 else 0],
            split=layers,
            timeout_s=rank_timeout,
        )
        if topology.rank != 0:
            _exit(follow(model, topology=topology, **session))
        import moe_server

        from .serve import check_port

        moe_server.check_bind(host, api_key)
        check_port(host, port)
        leader = Leader(model, topology=topology, **session)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"[bold]{leader.model_id}[/] on http://{shown}:{port}/v1")
    err_console.print(
        f"  split across {topology.size} hosts ({', '.join(topology.addresses)}); "
        f"loading, see http://{shown}:{port}/health"
    )
    for sig in (signal.SIGINT, signal.SIGTERM):  # as `moe serve`: a clean stop exits 0
        signal.signal(sig, lambda *_: None)
    try:
        with user_errors():
            moe_server.serve(leader, host=host, port=port, api_key=api_key, **limits)
    finally:
        clean = leader.close()
    err_console.print("stopped" if clean else "stopped (the group was broken)")
    _exit(0)


def _exit(code: int) -> None:
    """End the process now that every rank has stopped (or rank 0 cannot reach them): a model
    thread may still be stuck in a collective that never completes, and MLX's ring backend can
    abort in its destructors at interpreter exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _layers(split: str | None, size: int) -> list[int] | None:
    if split is None:
        return None
    try:
        layers = [int(s) for s in split.split(",")]
    except ValueError:
        fail(f"--split {split}: give the layers of each rank as whole numbers, e.g. 10,14")
    if len(layers) != size:
        fail(f"--split lists {len(layers)} ranks; the launch has {size}")
    return layers


def _num_layers(model: str | None) -> int:
    import json

    from moe_runtime import resolve_model

    _, path = resolve_model(model)
    config = json.loads((path / "config.json").read_text())
    config = {**config, **config.get("text_config", {})}
    return int(config["num_hidden_layers"])
