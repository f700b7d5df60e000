"""`moe verify [MODEL]`: check every file of a checkpoint against the hashes its download recorded
(the Hugging Face cache names blobs by their sha256), its safetensors headers against the files,
and its packed experts against their checksums. Exit code 1 when anything is damaged."""

from __future__ import annotations

import typer

from ._common import ModelArg, err_console, fail, progress_bar, user_errors


def verify(model: ModelArg = None) -> None:
    """Check a model's files against their recorded hashes and its pack's checksums."""
    with user_errors():
        from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn

        import moe_runtime

        with progress_bar(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        ) as progress:
            task = progress.add_task("verifying", total=None)
            checks = moe_runtime.verify(
                model,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    width = max(len(c.status) for c in checks)
    for check in checks:
        typer.echo(f"{check.status:<{width}}  {check.file}  {check.detail}".rstrip())
    bad = [c for c in checks if c.status == "bad"]
    unchecked = sum(c.status == "unchecked" for c in checks)
    summary = f"{len(checks) - len(bad) - unchecked} ok, {len(bad)} damaged, {unchecked} without a recorded hash"
    if bad:
        fail(f"{summary}; damaged: {', '.join(str(c.file) for c in bad)}")
    err_console.print(summary)
