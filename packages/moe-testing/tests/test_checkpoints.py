"""Every fixture checkpoint loads with the unmodified `mlx_lm.load` and is what it claims to be
on disk; the tokenizer, the seeding and the routing skew do what they say."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx_lm.convert import convert

from moe_testing import (
    FAMILIES,
    LAYOUTS,
    PRECISIONS,
    CheckpointSpec,
    build_checkpoint,
    reference_model,
    routing_counts,
    top_share,
)

PROMPT = "def fibonacci(n):"


def _valid(family: str, layout: str, precision: str) -> bool:
    try:
        CheckpointSpec(family, layout, precision)
    except ValueError:
        return False
    return True


COMBINATIONS = [
    (f, layout, p)
    for f in FAMILIES
    for layout in LAYOUTS
    for p in PRECISIONS
    if _valid(f, layout, p)
]


def read_header(path: Path) -> dict[str, dict]:
    """The tensors of a safetensors file: name -> {dtype, shape, data_offsets}."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def read_index(path: Path) -> dict[str, str]:
    return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]


def test_every_family_has_a_combination_of_each_kind():
    assert len(FAMILIES) >= 7
    for family in FAMILIES:
        kinds = {(layout, p) for f, layout, p in COMBINATIONS if f == family}
        assert {("stacked", p) for p in PRECISIONS} <= kinds
        assert {("split", p) for p in PRECISIONS} <= kinds
    # Every family that has an original per-expert form but gpt_oss, which fuses its experts.
    per_expert = {f for f, layout, _ in COMBINATIONS if layout == "per_expert"}
    assert per_expert == set(FAMILIES) - {"gpt_oss"}


@pytest.mark.parametrize(("family", "layout", "precision"), COMBINATIONS)
def test_loads_with_mlx_lm_and_runs(moe_checkpoint, family, layout, precision):
    path = moe_checkpoint(family, layout, precision)
    model, tokenizer = mlx_lm.load(str(path))

    assert model.model_type == family
    expected = mx.float32 if precision == "f32" else mx.bfloat16
    assert model.model.norm.weight.dtype == expected
    if precision in ("q4", "q8"):
        assert json.loads((path / "config.json").read_text())["quantization"]["bits"] == int(
            precision[1]
        )
    if precision == "bf16":
        return  # MLX's CPU gather_mm runs float32 only
    ids = tokenizer.encode(PROMPT)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), model.args.vocab_size)
    assert mx.isfinite(logits).all()


@pytest.mark.parametrize("family", [f for f in FAMILIES if _valid(f, "per_expert", "f32")])
def test_layouts_hold_the_same_model(moe_checkpoint, family):
    ids = mx.array([[1, 5, 42, 7, 300, 2]])
    logits = [mlx_lm.load(str(moe_checkpoint(family, layout, "f32")))[0](ids) for layout in LAYOUTS]
    for other in logits[1:]:
        assert mx.array_equal(logits[0], other)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "qwen3_next"])
@pytest.mark.parametrize("source", ["stacked", "per_expert"])
def test_quantized_as_mlx_lm_convert_does(moe_checkpoint, tmp_path, family, source):
    """mlx_lm.convert -q of the bf16 checkpoint gives our q4 checkpoint, tensor for tensor."""
    converted = tmp_path / "converted"
    convert(str(moe_checkpoint(family, source, "bf16")), str(converted), quantize=True, q_bits=4)
    ours = moe_checkpoint(family, "stacked", "q4")
    a, b = mx.load(str(converted / "model.safetensors")), {}
    for file in sorted(ours.glob("model-*.safetensors")):
        b.update(mx.load(str(file)))
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and mx.array_equal(a[name], b[name]), name
    config = json.loads((converted / "config.json").read_text())
    assert config == json.loads((ours / "config.json").read_text())


def test_stacked_on_disk(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "stacked", "q4")
    index = read_index(path)
    headers = {f: read_header(path / f) for f in sorted(set(index.values()))}
    assert list(headers) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    # The index names every tensor of every shard, and nothing else.
    assert index == {name: f for f, h in headers.items() for name in h}
    gate = headers[index["model.layers.1.mlp.switch_mlp.gate_proj.weight"]]
    # 16 experts, 64 outputs, 64 inputs packed eight 4-bit values to a uint32.
    assert gate["model.layers.1.mlp.switch_mlp.gate_proj.weight"]["shape"] == [16, 64, 8]
    assert gate["model.layers.1.mlp.switch_mlp.gate_proj.weight"]["dtype"] == "U32"
    assert not any(".experts." in name for name in index)
    # Whole layers per shard: layer 0 in the first, layer 1 in the second.
    for name, file in index.items():
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if layer:
            assert file.startswith(f"model-0000{int(layer.group(1)) + 1}-"), name


@pytest.mark.parametrize(
    ("family", "pattern", "projections"),
    [
        ("mixtral", "model.layers.{l}.block_sparse_moe.experts.{e}.{p}.weight", ["w1", "w2", "w3"]),
        ("qwen3_moe", "model.layers.{l}.mlp.experts.{e}.{p}.weight", ["gate_proj", "up_proj", "down_proj"]),
        ("qwen2_moe", "model.layers.{l}.mlp.experts.{e}.{p}.weight", ["gate_proj", "up_proj", "down_proj"]),
    ],
)  # fmt: skip
def test_per_expert_on_disk(moe_checkpoint, family, pattern, projections):
    path = moe_checkpoint(family, "per_expert", "bf16")
    config = json.loads((path / "config.json").read_text())
    num_experts = config.get("num_local_experts") or config["num_experts"]
    index = read_index(path)
    expected = {
        pattern.format(l=layer, e=e, p=p)
        for layer in range(config["num_hidden_layers"])
        for e in range(num_experts)
        for p in projections
    }
    experts = {name for name in index if ".experts." in name}
    assert experts == expected
    assert not any("switch_mlp" in name for name in index)
    name = pattern.format(l=0, e=3, p=projections[0])
    header = read_header(path / index[name])
    assert header[name]["dtype"] == "BF16"
    assert len(header[name]["shape"]) == 2


def test_split_cuts_one_layer_by_projection(moe_checkpoint):
    path = moe_checkpoint("qwen3_moe", "split", "q4")
    index = read_index(path)
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    for part in ("weight", "scales", "biases"):
        assert index[f"model.layers.0.mlp.switch_mlp.gate_proj.{part}"] == first
        assert index[f"model.layers.0.mlp.switch_mlp.up_proj.{part}"] == first
        assert index[f"model.layers.0.mlp.switch_mlp.down_proj.{part}"] == second
    assert index["model.layers.0.mlp.gate.weight"] == first
    assert index["model.layers.1.mlp.switch_mlp.gate_proj.weight"] == second
    for f in (first, second):
        assert set(read_header(path / f)) == {n for n, file in index.items() if file == f}


def test_split_cuts_the_first_moe_layer_after_dense_ones(moe_checkpoint):
    path = moe_checkpoint("deepseek_v3", "split", "f32")
    index = read_index(path)
    assert index["model.layers.0.mlp.down_proj.weight"].startswith("model-00001")  # dense
    assert index["model.layers.1.mlp.switch_mlp.up_proj.weight"].startswith("model-00001")
    assert index["model.layers.1.mlp.switch_mlp.down_proj.weight"].startswith("model-00002")


@pytest.mark.parametrize(
    ("family", "prefix"),
    [("mixtral", "model.layers.0.block_sparse_moe"), ("qwen3_next", "model.layers.0.mlp")],
)
def test_per_expert_split_cuts_one_layer_by_expert(moe_checkpoint, family, prefix):
    path = moe_checkpoint(family, "per_expert_split", "f32")
    index = read_index(path)
    shards = {}
    for name, file in index.items():
        m = re.fullmatch(re.escape(prefix) + r"\.experts\.(\d+)\.\w+\.weight", name)
        if m:
            shards.setdefault(int(m.group(1)), set()).add(file)
    num_experts = len(shards)
    assert num_experts >= 8
    for e, files in shards.items():
        half = 1 if e < num_experts // 2 else 2
        assert files == {f"model-0000{half}-of-00002.safetensors"}, e


def test_same_spec_same_bytes_and_seed_changes_weights(tmp_path):
    spec = CheckpointSpec("deepseek_v3", "split", "q4", skew=0.5)
    a = build_checkpoint(spec, tmp_path / "a")
    b = build_checkpoint(spec, tmp_path / "b")
    c = build_checkpoint(CheckpointSpec("deepseek_v3", "split", "q4", seed=1, skew=0.5), tmp_path)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    shard = "model-00001-of-00002.safetensors"
    assert (a / shard).read_bytes() != (c / shard).read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_same_bytes_in_a_fresh_process(tmp_path):
    # Another interpreter trains its own tokenizer and draws its own weights.
    spec = CheckpointSpec("qwen3_next", "per_expert", "bf16", skew=1.0)
    here = build_checkpoint(spec, tmp_path / "here")
    code = (
        "import sys; from moe_testing import CheckpointSpec, build_checkpoint; "
        "build_checkpoint(CheckpointSpec('qwen3_next', 'per_expert', 'bf16', skew=1.0), "
        "sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True)
    there = tmp_path / "there" / spec.name
    for file in here.iterdir():
        assert file.read_bytes() == (there / file.name).read_bytes(), file.name


def test_overrides_reach_the_config_and_make_large_experts(moe_checkpoint):
    # Experts of 11 MB in all, as a peak-memory test would want beside a small budget.
    path = moe_checkpoint(
        "mixtral", precision="q4", hidden_size=512, moe_intermediate_size=512, num_experts=8,
        top_k=3, num_layers=3,
    )  # fmt: skip
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"]) == (512, 512)
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (8, 3)
    assert config["num_hidden_layers"] == 3
    index = read_index(path)
    expert_bytes = 0
    for file in set(index.values()):
        for name, t in read_header(path / file).items():
            if ".switch_mlp." in name:
                expert_bytes += t["data_offsets"][1] - t["data_offsets"][0]
    # 3 layers x 8 experts x 3 projections of 512 x 512 at 4 bits, and their scales and biases.
    assert expert_bytes == 3 * 8 * 3 * (512 * 512 // 2 + 2 * 2 * 512 * 512 // 64)
    model, tokenizer = reference_model(path)
    logits = model(mx.array([tokenizer.encode(PROMPT)]))
    assert mx.isfinite(logits).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": "llama"}, "unknown family 'llama'"),
        ({"family": "mixtral", "layout": "sharded"}, "unknown layout"),
        ({"family": "mixtral", "precision": "q3"}, "unknown precision"),
        ({"family": "mixtral", "layout": "per_expert"}, "never writes quantized"),
        ({"family": "gpt_oss", "layout": "per_expert", "precision": "f32"}, "fuses"),
        ({"family": "mixtral", "top_k": 9}, "cannot exceed num_experts"),
        ({"family": "mixtral", "hidden_size": 96}, "multiple of the quantization group"),
        ({"family": "mixtral", "precision": "f32", "hidden_size": 100}, "multiple of 8"),
        ({"family": "qwen3_next", "num_layers": 1}, "num_layers >= 2"),
        ({"family": "deepseek_v3", "num_experts": 10, "top_k": 2}, "groups"),
        ({"family": "deepseek_v3", "num_experts": 8, "top_k": 6}, "at most 4"),
        ({"family": "mixtral", "skew": -1.0}, "skew"),
        ({"family": "mixtral", "seed": -1}, "seed"),
        ({"family": "mixtral", "num_experts": 0}, "positive int"),
    ],
)
def test_invalid_specs_raise(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CheckpointSpec(**kwargs)


def test_tokenizer_round_trips_and_templates(moe_checkpoint):
    _, tokenizer = mlx_lm.load(str(moe_checkpoint("qwen3_moe")))
    assert len(tokenizer.get_vocab()) == 512
    for text in [PROMPT + "\n    return n if n < 2 else fibonacci(n - 1)", "héllo wörld 🙂 ½"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert len(tokenizer.encode("<|im_start|><|im_end|><tool_call></tool_call>")) == 4

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert tokenizer.decode(ids) == prompt


def test_chat_template_renders_tools_for_mlx_lm_parser(moe_checkpoint):
    _, tokenizer = mlx_lm.load(str(moe_checkpoint("qwen3_moe")))
    assert tokenizer.has_tool_calling
    assert (tokenizer.tool_call_start, tokenizer.tool_call_end) == ("<tool_call>", "</tool_call>")
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in text
    body = text.split("<tool_call>\n")[-1].split("\n</tool_call>")[0]
    assert tokenizer.tool_parser(body) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert "<tool_response>\nsunny\n</tool_response>" in text


@pytest.mark.parametrize("family", FAMILIES)
def test_skew_concentrates_routing(moe_checkpoint, family):
    shares = []
    for skew in (0.0, 2.0):
        model, _ = mlx_lm.load(str(moe_checkpoint(family, "stacked", "f32", skew=skew)))
        counts = routing_counts(model, num_tokens=512)
        assert counts.sum() == 512 * model.args.num_experts_per_tok * counts.shape[0]
        shares.append(top_share(counts))
    # Measured 0.22-0.38 at skew 0 and 0.52-0.76 at skew 2 (benchmarks/routing_skew.py).
    assert shares[1] > shares[0] + 0.1


def test_top_share():
    assert top_share(np.array([[10] * 10])) == pytest.approx(0.2)
    assert top_share(np.array([[97, 1, 1, 1, 0]])) == pytest.approx(0.97)


def test_chat_template_thinks_like_qwen3(moe_checkpoint):
    _, tokenizer = mlx_lm.load(str(moe_checkpoint("qwen3_moe")))
    assert tokenizer.has_thinking
    assert (tokenizer.think_start, tokenizer.think_end) == ("<think>", "</think>")
    messages = [{"role": "user", "content": "Hi"}]

    def render(messages, **kwargs):
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )

    assert render(messages).endswith("<|im_start|>assistant\n")
    assert render(messages, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    # Reasoning of the turn after the last user message is shown; older reasoning is dropped.
    answered = {"role": "assistant", "content": "Hello", "reasoning_content": "greet back"}
    assert "<|im_start|>assistant\n<think>\ngreet back\n</think>\n\nHello<|im_end|>" in render(
        [*messages, answered]
    )
    later = render([*messages, answered, {"role": "user", "content": "Again"}])
    assert "greet back" not in later and "<|im_start|>assistant\nHello<|im_end|>" in later
