"""A small byte-level BPE tokenizer with a Qwen3-style chat template (tool calls, thinking).

It is trained once per process on text generated here, so a fixture never downloads one and
the same build gives the same `tokenizer.json` bytes.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

VOCAB_SIZE = 512

# Qwen2's order: the BPE vocabulary first, then the special tokens, then added tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2's pre-tokenizer split: contractions, letters, single digits, punctuation, spaces.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's template with Qwen3's thinking: an assistant turn after the last user message shows
# its `reasoning_content` in `<think>` tags, and `enable_thinking=false` closes an empty thinking
# block in the generation prompt. The `<tool_call>` tags and `tool_call.name` make mlx-lm pick
# its `json_tools` parser; the `<think>` tokens make it report `has_thinking`.
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(last_query=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_query = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls and not message.reasoning_content) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.reasoning_content and loop.index0 > ns.last_query %}
            {{- '\\n<think>\\n' + message.reasoning_content + '\\n</think>\\n' }}
        {%- endif %}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""


def _words(text: str) -> list[str]:
    return text.split()


_NOUNS = _words(
    "model expert router layer token cache memory disk weight tensor shard file batch "
    "prompt answer question number list string value index buffer slot kernel matrix "
    "vector graph request server client reply stream budget page block chunk queue thread "
    "process"
)
_VERBS = _words(
    "reads writes loads stores keeps drops picks routes sends returns holds evicts maps "
    "counts splits joins sorts checks builds runs measures prints opens closes"
)
_ADJECTIVES = _words(
    "small large fast slow quiet busy empty full first last next previous hot cold warm "
    "shared private random simple careful"
)
_NAMES = _words("n x y i j k count total items data path size left right key node")


def _corpus() -> str:
    """About 27 KB of English sentences and small Python functions, the same on every run."""
    rng = random.Random(0)
    parts = []
    for i in range(80):
        noun, other = rng.choice(_NOUNS), rng.choice(_NOUNS)
        adjective, verb = rng.choice(_ADJECTIVES), rng.choice(_VERBS)
        parts.append(
            f"The {adjective} {noun} {verb} the {other} when it is {rng.choice(_ADJECTIVES)}. "
            f"Each {other} {rng.choice(_VERBS)} {i % 10} {noun}s, and then it "
            f"{rng.choice(_VERBS)} a {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}.\n"
        )
        a, b = rng.sample(_NAMES, 2)
        parts.append(
            f"def {verb}_{noun}({a}, {b}={i}):\n"
            f'    """Return the {adjective} {noun} of {a}."""\n'
            f"    if {a} < {b}:\n"
            f"        return [{a} * {i % 7} for _ in range({b})]\n"
            f"    {other} = {{'{noun}': {a}, '{other}': {b} + 1}}\n"
            f"    return {other}.get('{noun}', None)\n\n"
        )
    parts.append(
        "You are a helpful assistant. The system gives the user tools, and the assistant "
        "calls a function with arguments when the user asks a question about the weather.\n"
    )
    parts.append(
        "def fibonacci(n):\n    if n < 2:\n        return n\n"
        "    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    )
    return "".join(parts)


@functools.cache
def tokenizer_json() -> str:
    """Train the tokenizer once per process and return its `tokenizer.json` text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(ADDED_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_corpus()], trainer=trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.add_tokens(list(ADDED_TOKENS))
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(
            f"The tokenizer corpus gave {tokenizer.get_vocab_size()} tokens, not {VOCAB_SIZE}."
        )
    return tokenizer.to_str(pretty=True)


@functools.cache
def token_id(token: str) -> int:
    found = Tokenizer.from_str(tokenizer_json()).token_to_id(token)
    if found is None:
        raise KeyError(f"{token!r} is not a token of the test tokenizer")
    return found


def _tokenizer_config() -> dict:
    added = {}
    for token in (*SPECIAL_TOKENS, *ADDED_TOKENS):
        added[str(token_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in SPECIAL_TOKENS,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer(model_dir: Path) -> None:
    (model_dir / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
