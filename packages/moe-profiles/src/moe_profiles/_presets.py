"""Prompt sets that ship with the package, for recording traces that look like real use.

A prompt is a raw string or OpenAI-style chat messages; tool-use prompts carry their tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ._errors import ProfileError

PRESETS = ("coding", "chat", "tools", "mixed")

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PresetPrompt:
    prompt: Prompt
    tools: list[dict[str, Any]] | None = None


def load_preset_requests(name: str) -> list[PresetPrompt]:
    """A preset's prompts with the tools each offers (None for plain prompts)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    where = f"moe_profiles/presets/{name}.json"
    try:
        doc = json.loads((resources.files("moe_profiles") / "presets" / f"{name}.json").read_text())
        items = doc["prompts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProfileError(f"{where}: unreadable preset ({e})") from None
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str | list):
            out.append(PresetPrompt(item))
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            out.append(PresetPrompt(item["messages"], item.get("tools")))
        else:
            raise ProfileError(f"{where}: prompt {i} is neither text, messages nor a request")
    return out


def load_preset(name: str) -> list[Prompt]:
    """A preset's prompts: text or chat messages (see `load_preset_requests` for their tools)."""
    return [p.prompt for p in load_preset_requests(name)]
