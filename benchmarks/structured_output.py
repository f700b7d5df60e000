"""What constrained decoding costs per token, for the grammar libraries that could back
`response_format` and forced tool calls.

    uv run --with outlines-core python benchmarks/structured_output.py [--json PATH]

For each library that imports (llguidance is moe-server's dependency; outlines-core is measured
when installed alongside; xgrammar is not, since its wheel requires torch and triton), each
tokenizer (the test tokenizer, 512 tokens; the demo model's, 4096; a byte-level BPE of 32000
tokens trained here on the Python standard library's source, close to a real model's) and each
schema (a small object; Claude Code's Bash tool call), it measures:
- compile: the seconds from a JSON Schema to a matcher ready for its first token;
- per token: walking a valid document token by token, the mask for the next token (a bitmask)
  and, separately, that mask applied to MLX logits of the vocabulary's size (the path
  `moe_server._structured.GrammarProcessor` takes: unpack bits, `mx.where`).
Then decode speed on the server tests' tiny offloaded session with and without the grammar
processor, in one run (this machine is noisy). Writes benchmarks/results/structured_output.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "packages/moe-server/tests/fixtures/claude_code/first_request.json"
SEPARATORS = (", ", ": ")  # the server's JSON layout
SMALL = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no"]},
        "reason": {"type": "string"},
        "score": {"type": "integer"},
    },
    "required": ["answer", "reason", "score"],
    "additionalProperties": False,
}
SMALL_DOC = {"answer": "yes", "reason": "the cache holds the hot experts", "score": 7}


def bash_tool() -> tuple[dict, dict]:
    tools = json.loads(FIXTURE.read_text())["body"]["tools"]
    schema = next(t["input_schema"] for t in tools if t["name"] == "Bash")
    schema = {k: v for k, v in schema.items() if k != "$schema"}
    doc = {"command": "ls -la src/", "description": "List the source folder"}
    return schema, doc


def tokenizers() -> dict:
    """name -> an HF fast tokenizer (transformers), built offline."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from moe_runtime import demo_model_path
    from moe_testing import CheckpointSpec, build_checkpoint

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(CheckpointSpec("qwen3_moe", num_layers=2, num_experts=8), tmp)
        out["test-512"] = AutoTokenizer.from_pretrained(str(path))
    out["demo-4096"] = AutoTokenizer.from_pretrained(str(demo_model_path()))
    out["bpe-32000"] = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(32000), eos_token="<eos>"
    )
    return out


def _train_bpe(size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:1500]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((p.read_text(errors="replace") for p in sources), trainer=trainer)
    return tokenizer


class LLGuidance:
    name = "llguidance"

    def __init__(self, hf):
        import llguidance
        import llguidance.hf

        self.ll = llguidance
        self.tok = llguidance.hf.from_tokenizer(hf, eos_token=hf.eos_token_id)

    def compile(self, schema: dict):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(
            schema,
            overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
        )
        matcher = self.ll.LLMatcher(self.tok, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def mask(self, matcher) -> np.ndarray:
        return np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)

    def advance(self, matcher, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, hf):
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema

        self.Guide, self.Index, self.regex = Guide, Index, build_regex_from_schema
        eos = hf.eos_token_id
        tokens: dict[bytes, list[int]] = {}
        for token, i in hf.get_vocab().items():
            if i != eos:
                tokens.setdefault(_token_bytes(hf, token), []).append(i)
        self.vocab = Vocabulary(eos, tokens)
        self.size = len(hf.get_vocab())

    def compile(self, schema: dict):
        regex = self.regex(json.dumps(schema), whitespace_pattern=r"[ ]?")
        return self.Guide(self.Index(regex, self.vocab))

    def mask(self, guide) -> np.ndarray:
        bits = np.zeros((self.size + 31) // 32, dtype=np.int32)
        guide.write_mask_into(bits.ctypes.data, bits.size, 4)
        return bits.view(np.uint8)

    def advance(self, guide, token: int) -> None:
        guide.advance(token, return_tokens=False)


def _token_bytes(hf, token: str) -> bytes:
    from mlx_lm.tokenizer_utils import _byte_decoder

    decoder = _byte_decoder()
    if all(c in decoder for c in token):
        return bytes(decoder[c] for c in token)
    return token.encode()


def apply(mask_bytes: np.ndarray, logits: mx.array) -> mx.array:
    """As GrammarProcessor does it."""
    allowed = np.unpackbits(mask_bytes, bitorder="little")[: logits.shape[-1]]
    return mx.where(mx.array(allowed.astype(np.bool_)), logits, -mx.inf)


def per_token(library, hf, schema: dict, doc: dict, repeats: int) -> dict:
    text = json.dumps(doc, separators=SEPARATORS)
    ids = hf.encode(text, add_special_tokens=False)
    vocab = len(hf.get_vocab())
    logits = mx.random.normal((1, vocab))
    mx.eval(logits)
    compile_s, mask_s, apply_s = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        matcher = library.compile(schema)
        bits = library.mask(matcher)  # the first mask is part of getting ready
        compile_s.append(time.perf_counter() - start)
        for token in ids:
            library.advance(matcher, token)
            start = time.perf_counter()
            bits = library.mask(matcher)
            mask_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            mx.eval(apply(bits, logits))
            apply_s.append(time.perf_counter() - start)
        allowed = np.unpackbits(bits, bitorder="little")
        assert allowed[hf.eos_token_id], f"{library.name}: the document did not complete"
    return {
        "tokens": len(ids),
        "compile_s": round(statistics.median(compile_s), 5),
        "mask_us_per_token": round(statistics.median(mask_s) * 1e6, 1),
        "mask_us_p95": round(sorted(mask_s)[int(0.95 * (len(mask_s) - 1))] * 1e6, 1),
        "apply_us_per_token": round(statistics.median(apply_s) * 1e6, 1),
    }


def decode_speed(tokens: int, rounds: int) -> dict:
    """Seconds per generated token on the tiny session, unconstrained vs under a JSON grammar
    that never ends (an array of strings), alternating runs."""
    sys.path.insert(0, str(ROOT / "packages/moe-server/tests"))
    from _fixture_model import CAPACITY, NUM_EXPERTS, NUM_LAYERS, TOP_K

    from moe_runtime import Session
    from moe_server._structured import GrammarProcessor, json_grammar, ll_tokenizer
    from moe_testing import CheckpointSpec, build_checkpoint

    endless = {"type": "array", "items": {"type": "string"}}
    with tempfile.TemporaryDirectory() as tmp:
        spec = CheckpointSpec(
            "qwen3_moe", num_layers=NUM_LAYERS, num_experts=NUM_EXPERTS, top_k=TOP_K
        )
        session = Session(build_checkpoint(spec, tmp), capacity=CAPACITY, cache_dir=tmp)
        lltok = ll_tokenizer(session.tokenizer)
        messages = [{"role": "user", "content": "List the experts."}]
        times: dict[str, list[float]] = {"free": [], "grammar": []}
        for _ in range(rounds):
            for kind in times:
                extra = {}
                if kind == "grammar":
                    extra["logits_processors"] = [GrammarProcessor(lltok, json_grammar(endless))]
                start = time.perf_counter()
                out = list(session.stream(messages, max_tokens=tokens, **extra))
                times[kind].append((time.perf_counter() - start) / len(out))
        session.close()
    free, grammar = statistics.median(times["free"]), statistics.median(times["grammar"])
    return {
        "tokens": tokens,
        "ms_per_token_free": round(free * 1e3, 3),
        "ms_per_token_grammar": round(grammar * 1e3, 3),
        "grammar_cost_ms_per_token": round((grammar - free) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/structured_output.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    libraries, unavailable = [], {}
    for cls, module in ((LLGuidance, "llguidance"), (OutlinesCore, "outlines_core")):
        try:
            __import__(module)
            libraries.append(cls)
        except ImportError as e:
            unavailable[cls.name] = f"not installed: {e}"
    unavailable["xgrammar"] = "not measured: its wheel requires torch and triton (GBs) on Linux"
    schemas = {"small": (SMALL, SMALL_DOC), "claude-code-bash-tool": bash_tool()}
    results = []
    for tok_name, hf in tokenizers().items():
        for cls in libraries:
            start = time.perf_counter()
            library = cls(hf)
            setup = time.perf_counter() - start
            for schema_name, (schema, doc) in schemas.items():
                row = per_token(library, hf, schema, doc, args.repeats)
                results.append(
                    {
                        "library": cls.name,
                        "tokenizer": tok_name,
                        "vocab": len(hf.get_vocab()),
                        "schema": schema_name,
                        "tokenizer_setup_s": round(setup, 3),
                        **row,
                    }
                )
                print(json.dumps(results[-1]))
    report = {
        "machine": f"{platform.system()} {platform.machine()}, {__import__('os').cpu_count()} "
        "cores, MLX CPU",
        "command": "uv run --with outlines-core python benchmarks/structured_output.py",
        "versions": {m: _version(m) for m in ("llguidance", "outlines-core", "mlx")},
        "unavailable": unavailable,
        "per_token": results,
        "decode": decode_speed(tokens=48, rounds=3),
    }
    print(json.dumps(report["decode"]))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
