"""What every command shares: one-line errors for user mistakes, the options that pick a model and
its budget, and loading a Session with a spinner. Only typer and rich are imported here, so
`moe --help` never pays for MLX."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

# soft_wrap: a line piped to a file or a pager is one line, not cut at 80 columns.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

MODEL_HELP = "Model directory or Hugging Face name; `demo` or none: the shipped demo model."
ModelArg = Annotated[
    str | None,
    typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False),
]
MemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--memory",
        help="Memory the whole process may use, with a unit: 12GB or 512MiB "
        "(default: what is available).",
        show_default=False,
    ),
]
HostMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--host-memory",
        help="CUDA only: host RAM for a second tier of experts between the GPU (sized by "
        "--memory) and the disk, with a unit, or 0 for none (default: half of what the host "
        "has available). Refused on CPU and Metal, which have one memory.",
        show_default=False,
    ),
]
CapacityOpt = Annotated[
    int | None,
    typer.Option(
        "--capacity",
        min=1,
        help="Experts kept in memory per MoE layer (instead of --memory).",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="Routing profile (JSON) to size and warm the cache with."),
]
PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Expert cache policy (default: the profile's choice, else markov): markov, lfuda, "
        "lru, lfu, fifo, s3fifo, stale or ahead.",
        show_default=False,
    ),
]
MissOpt = Annotated[
    str,
    typer.Option(
        "--miss",
        help="What a miss does: exact (read the expert), skip (LOSSY: drop it) or lowbit "
        "(LOSSY: answer from a resident 2-bit copy of every expert while the expert is read; "
        "the copies take memory from the budget).",
    ),
]
KVBitsOpt = Annotated[
    int | None,
    typer.Option("--kv-bits", help="Quantize the KV cache to 4 or 8 bits.", show_default=False),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and a non-zero exit: how every user mistake ends."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause (bad values, missing files, models that are not MoE or do
    not fit) into one line and exit code 1; anything else is a bug and keeps its traceback."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as e:
        if not _is_user_error(e):
            raise
        fail(_describe(e))


def _is_user_error(e: Exception) -> bool:
    if isinstance(e, (ValueError, OSError)):
        return True
    # moe_core is imported by the command body, never here (it imports MLX).
    core = sys.modules.get("moe_core")
    return core is not None and isinstance(e, core.MoEError)


def _describe(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def parse_memory(memory: str | None, option: str = "--memory") -> int | None:
    """`--memory` in bytes; a bad value is a ValueError that `user_errors` turns into one line.
    A bare number is refused: `--memory 12` meant 12 GB far more often than 12 bytes (but
    `--host-memory 0` is no host tier)."""
    if memory is None:
        return None
    if memory.strip().replace(".", "", 1).isdigit():
        if float(memory) == 0 and option == "--host-memory":
            return 0  # no host tier
        raise ValueError(
            f"{option} {memory}: give a unit, e.g. {memory.strip()}GB or {memory.strip()}MiB"
        )
    from moe_core import parse_size

    return parse_size(memory)


@contextlib.contextmanager
def spinner(text: str) -> Iterator[None]:
    """A spinner on a terminal; nothing when stderr is piped (rich would leave a blank line)."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(text):
        yield


def progress_bar(*columns):
    """A transient `rich.progress.Progress` on stderr, disabled when stderr is not a terminal."""
    from rich.progress import Progress

    return Progress(
        *columns, console=err_console, transient=True, disable=not err_console.is_terminal
    )


def open_session(
    model: str | None,
    *,
    memory: str | None = None,
    host_memory: str | None = None,
    **options: Any,
):
    """A `moe_runtime.Session` for `model` (the demo model when None), with a spinner while it
    loads and warms its cache."""
    memory_bytes = parse_memory(memory)
    if host_memory is not None:
        options["host_memory"] = parse_memory(host_memory, option="--host-memory")
    from moe_runtime import Session

    name = model or "the demo model"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with spinner(f"Loading {name}..."):
            session = Session(model, memory=memory_bytes, **options)
    for warning in caught:  # one line each, not Python's two-line warning format
        err_console.print(f"[yellow]warning:[/] {warning.message}", markup=True, soft_wrap=True)
    return session


_UNITS = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def human_bytes(n: float) -> str:
    return same_unit(n)[0]


def same_unit(*values: float) -> list[str]:
    """Byte counts shown together, all in the unit of the largest: one line never mixes units."""
    top = max(values)
    unit, size = next(((u, s) for u, s in _UNITS if top >= s), ("B", 1))
    return [f"{v / size:.2f} {unit}" if size > 1 else f"{int(v)} B" for v in values]


def describe_capacity(capacity: list[int] | tuple[int, ...], experts: list[int]) -> str:
    """`8 of 16 experts per layer` or, when layers differ, the distinct values."""
    pairs = sorted(set(zip(capacity, experts, strict=True)))
    if len(pairs) == 1:
        c, e = pairs[0]
        return f"{c} of {e} experts per layer ({len(capacity)} MoE layers)"
    return f"{min(capacity)}-{max(capacity)} experts per layer ({len(capacity)} MoE layers)"
