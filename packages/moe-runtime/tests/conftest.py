"""Tiny checkpoints with a ChatML tokenizer, built once per test session."""

from __future__ import annotations

import json
import types

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx_lm.utils import save_config, save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "hello",
    "world",
    "how",
    "are",
    "you",
    "today",
    "fine",
    "thanks",
    "what",
    "is",
    "your",
    "name",
]

BASE = dict(
    hidden_size=64,
    num_hidden_layers=4,
    intermediate_size=128,
    num_attention_heads=4,
    num_experts=16,
    num_experts_per_tok=4,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    moe_intermediate_size=64,
    rms_norm_eps=1e-6,
    vocab_size=320,
    num_key_value_heads=2,
    head_dim=32,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
    norm_topk_prob=True,
)
FAMILIES = {
    "qwen3_moe": {},
    "qwen3_next": dict(
        linear_num_value_heads=4,
        linear_num_key_heads=2,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        shared_expert_intermediate_size=64,
        partial_rotary_factor=0.25,
        full_attention_interval=2,
    ),
}


def _tokenizer(path):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = __import__("random").Random(0)
    text = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    tok.train_from_iterator(text, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            dict(
                tokenizer_class="PreTrainedTokenizerFast",
                eos_token="<|im_end|>",
                pad_token="<|endoftext|>",
                bos_token=None,
                chat_template=CHAT_TEMPLATE,
            )
        )
    )


def build(family: str, path, **overrides):
    import importlib

    module = importlib.import_module(f"mlx_lm.models.{family}")
    cfg = dict(BASE, model_type=family, **{**FAMILIES[family], **overrides})
    mx.random.seed(1)
    model = module.Model(module.ModelArgs.from_dict(cfg))
    nn.quantize(model, 64, 4)
    mx.eval(model.parameters())
    cfg["quantization"] = {"group_size": 64, "bits": 4}
    path.mkdir(parents=True)
    save_model(path, model, donate_model=False)
    save_config(cfg, path / "config.json")
    _tokenizer(path)
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    built = {}

    def get(family: str = "qwen3_moe"):
        if family not in built:
            built[family] = build(family, tmp_path_factory.mktemp("ckpt") / family)
        return built[family]

    return get


_LOADED: dict = {}


def reference(path) -> tuple:
    key = str(path)
    if key not in _LOADED:
        _LOADED[key] = mlx_lm.load(key)
    return _LOADED[key]


def ref_tokens(path, prompt, max_tokens: int, **kwargs) -> list[int]:
    """Greedy tokens of stock mlx-lm: chat messages through the template, token ids as given."""
    model, tokenizer = reference(path)
    if prompt and isinstance(prompt[0], dict):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
    return [
        r.token
        for r in mlx_lm.stream_generate(model, tokenizer, mx.array(prompt), max_tokens, **kwargs)
    ]


def session_tokens(session, prompt, max_tokens: int, **kwargs) -> list[int]:
    return [r.token for r in session.stream(prompt, max_tokens=max_tokens, **kwargs)]


@pytest.fixture(scope="session")
def ref():
    """Stock mlx-lm helpers: `ref.tokens(path, prompt, n)`, `ref.model(path)`, `ref.run(session, ...)`."""
    return types.SimpleNamespace(tokens=ref_tokens, model=reference, run=session_tokens)
