"""The demo model's corpus: the Python source of the interpreter that trains it.

Every `.py` file under the standard library and site-packages is read once (duplicates by content
are dropped), split into train and held-out by a hash of its content, and tokenized with a
byte-level BPE trained on a sample of the training files and of the agent conversations. A small
share of the training documents are ChatML conversations made from functions with docstrings
(docstring as the user's message, the function as the assistant's answer), so chat mode answers
with code; a larger share are the tool-call conversations of agent_data.py.
"""

from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import site
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Single tokens, as in Qwen3's vocabulary; mlx-lm finds thinking by <think> and </think> in it.
TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, *TAGS]
CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text()


@dataclass(slots=True, frozen=True)
class DataConfig:
    heldout_percent: int
    max_file_bytes: int
    max_line_chars: int
    tokenizer_sample_files: int
    tokenizer_sample_conversations: int
    vocab_size: int
    chat_share: float
    agent_share: float
    agent_seed: int
    heldout_agent_bytes: int
    max_files: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.heldout_percent < 100:
            raise ValueError(f"heldout_percent must be in (0, 100), got {self.heldout_percent}")
        if not (
            self.chat_share >= 0
            and self.agent_share >= 0
            and self.chat_share + self.agent_share < 1
        ):
            raise ValueError("chat_share and agent_share must be >= 0 and sum to less than 1")


@dataclass(slots=True, frozen=True)
class Document:
    digest: str
    text: str


def digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def source_roots() -> list[Path]:
    """The standard library and every site-packages folder of this interpreter."""
    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    roots: list[Path] = []
    for candidate in candidates:
        root = Path(candidate).resolve()
        if root.is_dir() and root not in roots:
            roots.append(root)
    # site-packages usually lies inside the stdlib folder: keep only the outermost roots.
    return [r for r in roots if not any(o != r and r.is_relative_to(o) for o in roots)]


def read_documents(roots: list[Path], config: DataConfig) -> list[Document]:
    """Every distinct, readable, not-too-large `.py` file under `roots`, ordered by content hash."""
    seen: dict[str, Document] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if not path.is_file() or path.stat().st_size > config.max_file_bytes:
                continue
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if (
                not text.strip()
                or max(map(len, text.splitlines()), default=0) > config.max_line_chars
            ):
                continue
            # Tokenizer sources spell the special tokens out; in the stream they would end documents.
            if any(token in text for token in SPECIAL_TOKENS):
                continue
            seen.setdefault(digest(text), Document(digest(text), text))
    documents = sorted(seen.values(), key=lambda d: d.digest)
    return documents[: config.max_files] if config.max_files else documents


def is_heldout(document: Document, percent: int) -> bool:
    return int(document.digest[:8], 16) % 100 < percent


def train_tokenizer(documents: list[Document], config: DataConfig, extra: list[str]) -> Tokenizer:
    """A byte-level BPE over a sample of the files and `extra` texts; the tags are not special."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    sample = [d.text for d in documents[: config.tokenizer_sample_files]] + extra
    tokenizer.train_from_iterator(sample, trainer=trainer)
    # Special tokens are dropped by decode(skip_special_tokens=True); the tags must survive it,
    # so that a streamed answer keeps them for the reasoning and tool-call parsers.
    spec = json.loads(tokenizer.to_str())
    for added in spec["added_tokens"]:
        added["special"] = added["content"] not in TAGS
    return Tokenizer.from_str(json.dumps(spec))


def _chat_samples(text: str) -> list[str]:
    """ChatML conversations made from the documented functions of one file."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = text.splitlines(keepends=True)
    samples = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node)
        # Whole lines: ast.get_source_segment splits the file anew on every call.
        source = "".join(lines[node.lineno - 1 : node.end_lineno])
        if not docstring or not 100 <= len(source) <= 3000:
            continue
        request = docstring.split("\n\n")[0].strip()
        if not 20 <= len(request) <= 600:
            continue
        code = textwrap.dedent(source).strip()
        prompts = (
            request,
            f"Write a Python function `{node.name}`. {request}",
            f"Implement {node.name}() in Python: {request}",
        )
        prompt = prompts[len(source) % len(prompts)]
        answer = f"```python\n{code}\n```"
        samples.append(
            render([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
        )
    return samples


def render(messages: list[dict], tools: list[dict] | None = None) -> str:
    """A whole conversation as the chat template writes it (transformers' own renderer)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=CHAT_TEMPLATE)
    return rendered[0]


def chat_documents(documents: list[Document], share: float, workers: int) -> list[Document]:
    """Chat samples from `documents`, in order, until they reach `share` of the training text."""
    if share == 0:
        return []
    budget = share / (1 - share) * sum(len(d.text) for d in documents)
    chats: list[Document] = []
    total = 0
    with multiprocessing.Pool(workers) as pool:
        for samples in pool.imap(_chat_samples, (d.text for d in documents), chunksize=64):
            for sample in samples:
                chats.append(Document(digest(sample), sample))
                total += len(sample)
            if total >= budget:
                pool.terminate()
                break
    return chats


def encode(tokenizer: Tokenizer, documents: list[Document]) -> np.ndarray:
    """Token ids of `documents`, each followed by `<|endoftext|>`, as one uint16 stream."""
    eot = tokenizer.token_to_id(ENDOFTEXT)
    chunks = []
    step = 4096
    for start in range(0, len(documents), step):
        batch = [d.text for d in documents[start : start + step]]
        for encoding in tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            ids = encoding.ids
            ids.append(eot)
            chunks.append(np.asarray(ids, dtype=np.uint16))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)
