"""Prompts to token ids: raw text, token ids as given, or chat messages through the model's
template, so text from the messages never becomes a control token.

A chat template writes its control tokens (`<|im_start|>`, `<|im_end|>`, ...) as text and the
tokenizer turns every such string into the control token, wherever it came from: a user who types
`<|im_start|>system` would open a system turn. Here every string in the messages and tools that
holds a special token's text is swapped for a placeholder before rendering; the rendered text is
split at the template's own special tokens, and the pieces between them are tokenized with the
placeholders put back and special tokens split (tokenized as the characters they are). Messages
without such text take the tokenizer's usual path, so their token ids do not change.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, cast

Prompt = str | list[dict] | list[int]


def encode_prompt(
    tokenizer: Any,
    prompt: Prompt,
    tools: list[dict] | None = None,
    *,
    vocab_size: int | None = None,
    chat_template_kwargs: dict | None = None,
) -> list[int]:
    """Token ids of a raw text prompt, a list of chat messages, or token ids as given (each
    below `vocab_size` when known).

    `chat_template_kwargs` reach the chat template (e.g. `enable_thinking`)."""
    if isinstance(prompt, str):
        bos = tokenizer.bos_token
        return tokenizer.encode(
            prompt, add_special_tokens=bos is None or not prompt.startswith(bos)
        )
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("prompt must be a string, a non-empty list of messages or of token ids")
    if all(isinstance(t, int) for t in prompt):
        ids = cast("list[int]", prompt)
        bad = [t for t in ids if t < 0 or (vocab_size is not None and t >= vocab_size)]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of the vocabulary")
        return list(ids)
    if all(isinstance(m, dict) for m in prompt):
        messages = cast("list[dict]", prompt)
        # Text in the messages never becomes a control token (a user cannot open a turn).
        return encode_messages(tokenizer, messages, tools, **(chat_template_kwargs or {}))
    raise ValueError("prompt must be a string, a list of messages (dicts) or of token ids")


def is_chat(prompt: Prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)


def encode_messages(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None = None,
    *,
    add_generation_prompt: bool = True,
    **template_kwargs: Any,
) -> list[int]:
    """Token ids of `messages` (and `tools`) rendered by `tokenizer`'s chat template, with a
    generation prompt unless told otherwise; `template_kwargs` reach the template (e.g.
    `enable_thinking`)."""
    template_kwargs["add_generation_prompt"] = add_generation_prompt
    if tools:
        template_kwargs["tools"] = tools
    specials = _special_tokens(tokenizer)
    if not specials:
        return list(tokenizer.apply_chat_template(messages, **template_kwargs))
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    escape = _Escape(pattern)
    messages = escape(messages)
    if "tools" in template_kwargs:
        template_kwargs["tools"] = escape(template_kwargs["tools"])
    text = tokenizer.apply_chat_template(messages, tokenize=False, **template_kwargs)
    if not escape.found:
        return list(tokenizer.encode(text, add_special_tokens=False))
    return _encode_split(tokenizer, text, pattern, specials, escape.found)


def message_boundary(
    tokenizer: Any,
    messages: list[dict],
    tools: list[dict] | None,
    tokens: list[int],
    **template_kwargs: Any,
) -> int | None:
    """How many of `tokens` (the rendered prompt) end with its last message, before the
    generation prompt: where the next turn's prompt, which renders the same messages first,
    still agrees with this one. None when the template cannot tell."""
    try:
        head = encode_messages(
            tokenizer, messages, tools, add_generation_prompt=False, **template_kwargs
        )
    except Exception:  # a template that needs its generation prompt: no boundary
        return None
    n = 0
    for a, b in zip(head, tokens, strict=False):
        if a != b:
            break
        n += 1
    return n or None


class _Escape:
    """Copies a JSON-like value with every special token's text swapped for a placeholder that
    no template changes and no tokenizer reads as a special token."""

    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern = pattern
        self.nonce = secrets.token_hex(8)
        self.found: dict[str, str] = {}  # placeholder -> the special token's text
        self._by_text: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.pattern.sub(self._placeholder, value)
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value

    def _placeholder(self, match: re.Match) -> str:
        text = match.group(0)
        if text not in self._by_text:
            placeholder = f"moe{self.nonce}x{len(self._by_text)}x"
            self._by_text[text] = placeholder
            self.found[placeholder] = text
        return self._by_text[text]


def _encode_split(
    tokenizer: Any, text: str, pattern: re.Pattern, specials: dict, found: dict[str, str]
) -> list[int]:
    """What the tokenizer does with `text` (split at special tokens, the pieces between encoded
    on their own), except that the pieces get their placeholders back as plain text."""
    ids: list[int] = []
    pieces = pattern.split(text)
    marks = pattern.findall(text)
    for i, piece in enumerate(pieces):
        # A special token that strips the whitespace beside it takes it from its neighbours.
        if i > 0 and specials[marks[i - 1]].rstrip:
            piece = piece.lstrip()
        if i < len(marks) and specials[marks[i]].lstrip:
            piece = piece.rstrip()
        for placeholder, original in found.items():
            piece = piece.replace(placeholder, original)
        if piece:
            ids.extend(tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True))
        if i < len(marks):
            ids.append(specials[marks[i]].id)
    return ids


class _Special:
    __slots__ = ("id", "lstrip", "rstrip")

    def __init__(self, token_id: int, lstrip: bool, rstrip: bool) -> None:
        self.id, self.lstrip, self.rstrip = token_id, lstrip, rstrip


def _special_tokens(tokenizer: Any) -> dict[str, _Special]:
    """The tokenizer's special (control) tokens by their text. Added tokens that are not special
    (`<tool_call>`, `<think>`) are ordinary vocabulary a model also writes as text."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    decoder = getattr(hf, "added_tokens_decoder", None) or {}
    out = {
        added.content: _Special(token_id, bool(added.lstrip), bool(added.rstrip))
        for token_id, added in decoder.items()
        if getattr(added, "special", False) and added.content
    }
    if not out:  # a tokenizer without added-token metadata: its declared special tokens
        for text in getattr(hf, "all_special_tokens", ()) or ():
            token_id = hf.convert_tokens_to_ids(text)
            if isinstance(token_id, int):
                out[text] = _Special(token_id, False, False)
    return out
