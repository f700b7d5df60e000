"""`moe pack MODEL`: write the packed expert layout (one aligned record per expert), so each miss
is a single read. Sessions pick it up automatically from the model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import ModelArg, err_console, human_bytes, progress_bar, user_errors


def pack(
    model: ModelArg = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write it (default: experts.moepack in the model directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the packed expert layout beside the checkpoint."""
    with user_errors():
        from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn

        import moe_core
        from moe_runtime import load_checked, resolve_model

        _, path = resolve_model(model)
        lazy, _, _ = load_checked(path, tokenizer=False)
        with progress_bar(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        ) as progress:
            task = progress.add_task("packing experts", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            written = moe_core.pack(lazy, path, out, progress=advance)
    err_console.print(f"wrote {written} ({human_bytes(written.stat().st_size)})")
