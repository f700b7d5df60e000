"""Routing traces: per MoE layer, the experts the router selected at every step.

A step is one forward pass of one MoE layer: a prefill chunk or one decoded token, so its ids are
`[tokens, k]`. Steps of a layer are stored concatenated with offsets, which keeps a trace of tens of
thousands of steps as a handful of arrays rather than a Python object per step. A trace may also
hold, per step, the experts the lookahead predicted for it (the previous layer's input through
this layer's router), so policies that use the prediction can be replayed.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moe_core import atomic_write

from ._errors import TraceError

FORMAT = "moe-trace"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Segment:
    """A named part of a trace (one prompt), starting at `starts[layer]` steps into each layer."""

    name: str
    starts: tuple[int, ...]


@dataclass(frozen=True, slots=True, eq=False)
class LayerTrace:
    """One MoE layer's steps: `ids[offsets[s]:offsets[s + 1]]` are step `s`'s rows `[tokens, k]`."""

    ids: np.ndarray  # [tokens, k] over all steps
    offsets: np.ndarray  # [steps + 1]
    predicted: np.ndarray | None = None  # [steps, p] predicted ids per step, -1 padded

    def __post_init__(self) -> None:
        if self.ids.ndim != 2:
            raise TraceError(f"layer ids must be [tokens, k], got shape {self.ids.shape}")
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise TraceError("layer offsets must start at 0")
        if self.offsets[-1] != self.ids.shape[0] or np.any(np.diff(self.offsets) < 0):
            raise TraceError(
                f"layer offsets end at {int(self.offsets[-1])}, ids have {self.ids.shape[0]} rows"
            )
        if self.predicted is not None and (
            self.predicted.ndim != 2 or self.predicted.shape[0] != self.num_steps
        ):
            raise TraceError(
                f"layer predictions must be [steps, p] for {self.num_steps} steps, "
                f"got shape {self.predicted.shape}"
            )

    @property
    def num_steps(self) -> int:
        return self.offsets.size - 1

    @property
    def steps(self) -> list[np.ndarray]:
        return np.split(self.ids, self.offsets[1:-1])

    def unique_steps(self) -> list[np.ndarray]:
        """Each step's distinct expert ids, sorted (what the cache sees)."""
        return [np.unique(s).astype(np.int64) for s in self.steps]

    def step_index(self) -> np.ndarray:
        """The step of every row of `ids`."""
        return np.repeat(np.arange(self.num_steps), np.diff(self.offsets))

    def slice(self, start: int, stop: int) -> LayerTrace:
        """Steps `start` to `stop` (exclusive) as a layer trace of their own."""
        offsets = self.offsets[start : stop + 1]
        predicted = None if self.predicted is None else self.predicted[start:stop]
        return LayerTrace(self.ids[offsets[0] : offsets[-1]], offsets - offsets[0], predicted)


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A routing trace of one model: per MoE layer its steps, plus what it was recorded on."""

    layers: tuple[LayerTrace, ...]
    num_experts: tuple[int, ...]
    top_k: int
    fingerprint: str = ""
    segments: tuple[Segment, ...] = ()

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.num_experts):
            raise TraceError(
                f"trace has {len(self.layers)} layers but num_experts lists {len(self.num_experts)}"
            )
        for i, (layer, experts) in enumerate(zip(self.layers, self.num_experts, strict=True)):
            if layer.ids.size and (layer.ids.min() < 0 or layer.ids.max() >= experts):
                raise TraceError(f"layer {i}: expert ids outside 0..{experts - 1}")
            if (
                layer.predicted is not None
                and layer.predicted.size
                and layer.predicted.max() >= experts
            ):
                raise TraceError(f"layer {i}: predicted expert ids outside 0..{experts - 1}")
        for seg in self.segments:
            if len(seg.starts) != len(self.layers):
                raise TraceError(f"segment {seg.name!r} has starts for {len(seg.starts)} layers")

    @classmethod
    def from_steps(
        cls,
        steps: list[list[np.ndarray]],
        num_experts: list[int] | tuple[int, ...],
        *,
        top_k: int | None = None,
        fingerprint: str = "",
        segments: tuple[Segment, ...] | list[Segment] = (),
        predicted: list[list[np.ndarray | None]] | None = None,
    ) -> Trace:
        """Build from per-layer lists of `[tokens, k]` arrays (or flat id lists, one token each);
        `predicted`, per layer and step, the ids the lookahead predicted (None: no prediction)."""
        layers = []
        for index, layer_steps in enumerate(steps):
            rows = [
                np.asarray(s).reshape(-1, np.shape(s)[-1] if np.ndim(s) else 1) for s in layer_steps
            ]
            k = max((r.shape[1] for r in rows), default=top_k or 1)
            if any(r.shape[1] != k for r in rows):
                raise TraceError("all steps of a layer must select the same number of experts")
            ids = np.concatenate(rows) if rows else np.zeros((0, k), dtype=np.int32)
            offsets = np.concatenate([[0], np.cumsum([r.shape[0] for r in rows])]).astype(np.int64)
            guesses = predicted[index] if predicted is not None else None
            layers.append(LayerTrace(_compact(ids), offsets, _padded(guesses, len(rows))))
        if top_k is None:
            top_k = max((layer.ids.shape[1] for layer in layers), default=1)
        return cls(
            tuple(layers),
            tuple(int(e) for e in num_experts),
            int(top_k),
            fingerprint,
            tuple(segments),
        )

    # -- views -----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_steps(self) -> int:
        """Steps of the layer that saw the most (all layers see the same in a normal run)."""
        return max((layer.num_steps for layer in self.layers), default=0)

    @property
    def num_tokens(self) -> int:
        return max((layer.ids.shape[0] for layer in self.layers), default=0)

    def counts(self) -> list[np.ndarray]:
        """Per layer, how many times each expert was selected."""
        return [
            np.bincount(layer.ids.ravel(), minlength=e).astype(np.int64)
            for layer, e in zip(self.layers, self.num_experts, strict=True)
        ]

    def slice(self, start: int, stop: int) -> Trace:
        """Steps `start` to `stop` (exclusive) of every layer, with the segments that start in it."""
        layers = tuple(layer.slice(start, stop) for layer in self.layers)
        segments = tuple(
            Segment(seg.name, tuple(max(0, s - start) for s in seg.starts))
            for seg in self.segments
            if all(s < stop for s in seg.starts) and all(s >= start for s in seg.starts)
        )
        return Trace(layers, self.num_experts, self.top_k, self.fingerprint, segments)

    def split(self, held_out: float) -> tuple[Trace, Trace]:
        """Chronological split: the first steps to fit on and the last `held_out` share of them to
        check on, cut at the segment (prompt) start nearest to that share when there are segments."""
        if not 0 < held_out < 1:
            raise ValueError(f"held-out share {held_out} must be in (0, 1)")
        total = self.num_steps
        cut = round(total * (1 - held_out))
        starts = [seg.starts[0] for seg in self.segments if 0 < seg.starts[0] < total]
        if starts:
            cut = min(starts, key=lambda s: abs(s - cut))
        cut = min(max(cut, 1), total - 1)
        return self.slice(0, cut), self.slice(cut, total)

    def segment_bounds(self, layer: int, *, windows: int = 8) -> list[tuple[int, int]]:
        """Step ranges of the prompt segments of `layer`; with fewer than two segments, the trace
        split into `windows` equal parts so "present in most segments" still means something."""
        total = self.layers[layer].num_steps
        if len(self.segments) >= 2:
            starts = [seg.starts[layer] for seg in self.segments]
            if starts[0] != 0:
                starts = [0, *starts]
        else:
            starts = (
                np.linspace(0, total, min(windows, max(total, 1)) + 1).astype(int)[:-1].tolist()
            )
        ends = [*starts[1:], total]
        return [(a, b) for a, b in zip(starts, ends, strict=True) if b > a]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (
            self.num_experts == other.num_experts
            and self.top_k == other.top_k
            and self.fingerprint == other.fingerprint
            and self.segments == other.segments
            and len(self.layers) == len(other.layers)
            and all(
                np.array_equal(a.ids, b.ids)
                and np.array_equal(a.offsets, b.offsets)
                and _same(a.predicted, b.predicted)
                for a, b in zip(self.layers, other.layers, strict=True)
            )
        )

    __hash__ = None  # type: ignore[assignment]

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a compressed `.npz` atomically (temp file + rename)."""
        path = Path(path)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "num_experts": list(self.num_experts),
            "top_k": self.top_k,
            "segments": [{"name": s.name, "starts": list(s.starts)} for s in self.segments],
        }
        arrays: dict[str, Any] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for i, layer in enumerate(self.layers):
            arrays[f"ids_{i}"] = layer.ids
            arrays[f"offsets_{i}"] = layer.offsets
            if layer.predicted is not None:
                arrays[f"predicted_{i}"] = layer.predicted
        with atomic_write(path) as f:
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if path.is_file() and not zipfile.is_zipfile(path):
            # np.load would take any other file for a pickle and suggest allow_pickle.
            if path.suffix == ".npz":
                raise TraceError(f"{path}: corrupt trace file (not a zip archive)")
            raise TraceError(
                f"{path}: not a routing trace (the .npz that `moe profile --trace` writes)"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                if meta.get("format") != FORMAT:
                    raise TraceError(f"{path}: not a moe trace (format {meta.get('format')!r})")
                if meta.get("version") != VERSION:
                    raise TraceError(
                        f"{path}: trace version {meta.get('version')!r}, this moe-profiles reads {VERSION}"
                    )
                num_experts = tuple(int(e) for e in meta["num_experts"])
                layers = tuple(
                    LayerTrace(
                        data[f"ids_{i}"],
                        data[f"offsets_{i}"].astype(np.int64),
                        data.get(f"predicted_{i}"),
                    )
                    for i in range(len(num_experts))
                )
                segments = tuple(
                    Segment(str(s["name"]), tuple(int(x) for x in s["starts"]))
                    for s in meta["segments"]
                )
                return cls(
                    layers, num_experts, int(meta["top_k"]), str(meta["fingerprint"]), segments
                )
        except FileNotFoundError:
            raise TraceError(f"{path}: no such trace file") from None
        except TraceError as e:
            if str(e).startswith(f"{path}:"):
                raise
            raise TraceError(f"{path}: {e}") from None
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
            raise TraceError(f"{path}: corrupt trace file ({type(e).__name__}: {e})") from None


@dataclass(slots=True)
class TraceRecorder:
    """An observer for `handle.observe(recorder)`: accumulates every step of every layer.

    Call `segment(name)` before each prompt to mark where it starts; `trace()` returns the result.
    `predicted(layer, ids)` records what the lookahead expects at that layer's next step.
    """

    num_experts: list[int] | tuple[int, ...]
    top_k: int | None = None
    fingerprint: str = ""
    _steps: list[list[np.ndarray]] = field(init=False)
    _segments: list[Segment] = field(init=False, default_factory=list)
    _predicted: list[list[np.ndarray | None]] = field(init=False)
    _pending: list[np.ndarray | None] = field(init=False)

    def __post_init__(self) -> None:
        self.clear()

    @classmethod
    def attach(cls, handle, *, fingerprint: str = "", top_k: int | None = None) -> TraceRecorder:
        """A recorder sized for an `moe_core.OffloadHandle`, observing it."""
        return handle.observe(cls(list(handle.num_experts), top_k, fingerprint))

    def on_step(self, layer: int, ids: np.ndarray) -> None:
        if not 0 <= layer < len(self._steps):
            raise TraceError(f"trace recorder told of MoE layer {layer}, it has {len(self._steps)}")
        self._steps[layer].append(np.array(ids, copy=True).reshape(-1, ids.shape[-1]))
        self._predicted[layer].append(self._pending[layer])
        self._pending[layer] = None

    def predicted(self, layer: int, ids: np.ndarray) -> None:
        """The lookahead expects `ids` at `layer`'s next step."""
        if not 0 <= layer < len(self._steps):
            raise TraceError(f"prediction for MoE layer {layer}, recorder has {len(self._steps)}")
        self._pending[layer] = np.unique(np.asarray(ids)).astype(np.int64)

    def segment(self, name: str) -> None:
        """Mark the start of a new prompt segment at the current step of every layer."""
        self._segments.append(Segment(name, tuple(len(s) for s in self._steps)))

    def clear(self) -> None:
        self._steps = [[] for _ in self.num_experts]
        self._segments = []
        self._predicted = [[] for _ in self.num_experts]
        self._pending = [None for _ in self.num_experts]

    def trace(self) -> Trace:
        return Trace.from_steps(
            self._steps,
            self.num_experts,
            top_k=self.top_k,
            fingerprint=self.fingerprint,
            segments=self._segments,
            predicted=self._predicted,
        )


def _padded(guesses: list[np.ndarray | None] | None, steps: int) -> np.ndarray | None:
    """Per-step predictions as one `[steps, p]` array padded with -1; None when there are none."""
    if guesses is None or all(g is None for g in guesses):
        return None
    if len(guesses) != steps:
        raise TraceError(f"{len(guesses)} predictions for {steps} steps")
    width = max(1, max(g.size for g in guesses if g is not None))
    out = np.full((steps, width), -1, dtype=np.int16)
    for i, g in enumerate(guesses):
        if g is not None:
            out[i, : g.size] = g
    return out


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _compact(ids: np.ndarray) -> np.ndarray:
    """The narrowest integer dtype that holds the ids (int16 for up to 32k experts)."""
    ids = np.asarray(ids)
    dtype = np.int16 if ids.size == 0 or ids.max() < 2**15 else np.int32
    return ids.astype(dtype)
