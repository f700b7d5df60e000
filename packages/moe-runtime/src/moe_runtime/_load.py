"""Loading a checkpoint directory with mlx-lm, lazily, with every failure a user's files can cause
named in one line: the file at fault and what is wrong with it.

The checks cost nothing when the files are good: the config's field types are compared with the
model's `ModelArgs` (no I/O), and the weights and tokenizer files are only examined after mlx-lm
has failed on them, to say which file and why.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import mlx.nn as nn
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _get_classes, load_model, load_tokenizer

import moe_core
from moe_core import MoEError

_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class ModelLoadError(MoEError, ValueError):
    """A model directory whose config, weights or tokenizer cannot be loaded (names the file)."""


def load_checked(
    path: Path, *, tokenizer: bool = True
) -> tuple[nn.Module, TokenizerWrapper | None, dict]:
    """`(model, tokenizer, config)` of a checkpoint directory, the model lazy (no weight read);
    the tokenizer is None when not asked for. Raises `ModelLoadError` naming the file at fault."""
    path = Path(path)
    config_file = path / "config.json"
    config = read_json(config_file)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file}: expected a JSON object, found {_kind(config)}")
    if "model_type" not in config:
        raise ModelLoadError(f"{config_file}: no model_type (not an mlx-lm or Hugging Face config)")
    if not isinstance(config.get("model_file"), str):  # custom code is refused by mlx-lm anyway
        _check_types(config_file, config)
    try:
        model, config = load_model(path, lazy=True)
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path}: no model*.safetensors weights ({e})") from None
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
        raise _weights_error(path, config_file, e) from e
    if not tokenizer:
        return model, None, config
    return model, _tokenizer(path, config), config


def read_json(file: Path):
    """A JSON file's content; a missing or malformed file is a `ModelLoadError` naming it."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"{file}: missing") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"{file}: not UTF-8 text") from None
    except OSError as e:
        raise ModelLoadError(f"{file}: cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelLoadError(
            f"{file}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        ) from None


def _check_types(config_file: Path, config: dict) -> None:
    """Each config value whose `ModelArgs` field is a plain int, float, bool or str must be of
    that kind. Only clear mismatches are refused (a string for a number, a fraction for a count);
    null is left to the model, which may accept it."""
    try:
        _, args_class = _get_classes(config)
    except ValueError as e:  # the model type mlx-lm does not know
        raise ModelLoadError(f"{config_file}: {e}") from None
    try:
        hints = typing.get_type_hints(args_class)
    except Exception:  # annotations mlx-lm itself never evaluates: nothing to check against
        return
    for field in dataclasses.fields(args_class):
        value = config.get(field.name)
        expected = _plain_type(hints.get(field.name))
        if value is None or expected is None or _fits(value, expected):
            continue
        raise ModelLoadError(
            f"{config_file}: {field.name} is {json.dumps(value)}, expected {_KINDS[expected]}"
        )


def _plain_type(hint) -> type | None:
    """int, float, bool or str for `int`, `Optional[int]`, `int | None`; None for anything else."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    return hint if hint in _KINDS else None


def _fits(value, expected: type) -> bool:
    if expected is str:
        return isinstance(value, str)
    if isinstance(value, str | list | dict):
        return False
    if expected is int and isinstance(value, float):
        return value.is_integer()
    return True  # numbers and booleans stand in for each other as Python allows


def _weights_error(path: Path, config_file: Path, error: Exception) -> ModelLoadError:
    """Why mlx-lm could not build the model: a shard it cannot read (the header check names the
    file and tensor), or a config it cannot build a model from."""
    try:
        moe_core.fingerprint(path)  # reads every shard's header and checks it against the file
    except moe_core.CheckpointError as e:
        return ModelLoadError(str(e))
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "safetensors" in first or "weight" in first.lower() or "parameters" in first.lower():
        return ModelLoadError(f"{path}: the weights do not load ({first})")
    return ModelLoadError(
        f"{config_file}: mlx-lm cannot build a model from it ({type(error).__name__}: {first})"
    )


def _tokenizer(path: Path, config: dict) -> TokenizerWrapper:
    try:
        wrapper = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as e:  # tokenizers and transformers raise many kinds; name the file
        for file in sorted(path.glob("tokenizer*.json")):
            read_json(file)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{path}: the tokenizer does not load ({first})") from e
    inner = wrapper._tokenizer
    # Without tokenizer.json / tokenizer.model / vocab files, transformers still builds a
    # tokenizer from special_tokens_map.json alone: one that knows nothing but its special tokens.
    if len(inner) <= len(set(inner.all_special_tokens)):
        raise ModelLoadError(
            f"{path}: no tokenizer (tokenizer.json, tokenizer.model or vocab files are missing)"
        )
    return wrapper


def _kind(value) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), "a value")
