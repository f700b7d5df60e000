"""What the server needs from a model: the moe-runtime Session interface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Provider(Protocol):
    """A loaded model the server generates with; `moe_runtime.Session` is one.

    Only the worker thread calls `stream` and `stats`, one call at a time, so a provider need
    not be thread-safe. `stream` yields mlx-lm `GenerationResponse`-like objects (`.text`,
    `.prompt_tokens`, `.generation_tokens`, `.generation_tps`, `.finish_reason`, and where a
    prompt cache held part of the prompt `.cached_tokens`, reported in each API's usage) and
    stops generating when the server closes the iterator. The server also passes `cancelled`, a
    function a provider may ask during a long prefill (it returns True once the client has gone;
    the iterator may then end without a token). A provider with a `max_context` attribute
    (tokens, prompt and answer together) has prompts that leave no room refused up front.

    Requests that ask for them add `chat_template_kwargs` (to `stream` and `encode_prompt`),
    `logits_processors` (mlx-lm's interface: a grammar's mask), `presence_penalty`,
    `frequency_penalty` and `logit_bias`; `.logprobs` (the vocabulary's log probabilities) and
    `.token` are read for `logprobs`.

    `stats(window=False)` may leave out what is costly to compute and not shown on the live
    page (moe-core's Belady window): the page's samples between tokens ask for that; the one at
    start and after each job, which `/metrics` shows, read everything.

    A provider may have `open_batch(n)` (`moe_runtime.Session`): a batch decoding up to n
    requests together (`alone(**sampling)`, `add(prompt, cancelled=, **sampling) -> id`,
    `step() -> [(id, response)]`, `remove(id)`, `close()`); it raises ValueError where the
    provider cannot batch, and the server then runs one request at a time.

    A provider may also have `health() -> {"status", "reason", "ranks"}` (moe-runtime's
    `Leader`, a model split across hosts): the event loop calls it, so it must not touch MLX.
    A status other than "ok" refuses requests with a 503 that gives the reason, and `/health`
    and `/metrics` show every rank.
    """

    model_id: str

    @property
    def tokenizer(self) -> Any: ...

    def stream(self, prompt: Any, **sampling: Any) -> Iterator[Any]: ...

    def encode_prompt(
        self, prompt: Any, tools: list[dict] | None = None, **template: Any
    ) -> list[int]: ...

    def stats(self, *, window: bool = True) -> dict: ...
