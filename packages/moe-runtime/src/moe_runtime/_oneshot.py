"""One-shot `generate` and `stream_generate`: load a model (or use a `Session`), generate, close."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mlx_lm.generate import GenerationResponse

from ._session import Session
from ._template import Prompt

_SESSION_ARGS = (
    "memory", "capacity", "profile", "policy", "miss", "kv_bits", "cache_dir", "max_context",
    "prefix_cache", "warm_start", "backend", "group", "split",
)  # fmt: skip


def _split(kwargs: dict) -> tuple[dict, dict]:
    session = {k: v for k, v in kwargs.items() if k in _SESSION_ARGS}
    return session, {k: v for k, v in kwargs.items() if k not in _SESSION_ARGS}


def generate(model: str | Path | Session | None, prompt: Prompt, **kwargs) -> str:
    """One-shot: load `model` (or use a `Session`), generate, close. Takes the arguments of
    `Session` and of `Session.stream`."""
    return "".join(r.text for r in stream_generate(model, prompt, **kwargs))


def stream_generate(
    model: str | Path | Session | None, prompt: Prompt, **kwargs
) -> Iterator[GenerationResponse]:
    """One-shot streaming: like `generate`, yielding mlx-lm `GenerationResponse`s."""
    session_kwargs, stream_kwargs = _split(kwargs)
    if isinstance(model, Session):
        if session_kwargs:
            raise ValueError(f"{', '.join(session_kwargs)}: the session is already loaded")
        yield from model.stream(prompt, **stream_kwargs)
        return
    with Session(model, **session_kwargs) as session:
        yield from session.stream(prompt, **stream_kwargs)
