"""`moe pack MODEL`: write the packed expert layout (one aligned record per expert), so each miss
is a single read. Sessions pick it up automatically from the model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import err_console, human_bytes, user_errors


def pack(
    model: Annotated[
        str, typer.Argument(help="Model directory or Hub repo id.", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write it [default: experts.moepack in the model directory].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the packed expert layout beside the checkpoint."""
    with user_errors():
        from mlx_lm.utils import load_model
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        import moe_core
        from moe_runtime import resolve_model

        _, path = resolve_model(model)
        lazy, _ = load_model(path, lazy=True)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("packing experts", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            written = moe_core.pack(lazy, path, out, progress=advance)
    err_console.print(f"wrote {written} ({human_bytes(written.stat().st_size)})")
