"""Train the demo model on one CUDA GPU and write a Hugging Face checkpoint.

    python training/train.py --config training/config.json --out CHECKPOINT_DIR

builds the corpus and tokenizer (data.py, agent_data.py), trains the qwen3_moe in model.py in two
phases (`train.steps` windows of `seq_len` tokens, then `train.long_steps` windows of
`long_seq_len`, one learning-rate schedule over both), measures held-out loss, loss by position and
expert usage, and writes config.json, model.safetensors, the tokenizer files and metrics.json into
CHECKPOINT_DIR. Steps given as null are sized from `time_limit_s` by timing a few throwaway steps
of each phase first; metrics.json records the steps it ran, which a rerun can set.
`--set section.key=value` overrides one configuration value (for short trial runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import agent_data
import data
import numpy as np
import torch
import torch.nn.functional as F
from model import ModelConfig, Qwen3Moe, hf_state_dict, load_balancing_loss
from safetensors.torch import save_file


@dataclass(slots=True, frozen=True)
class TrainConfig:
    seed: int
    batch_size: int
    seq_len: int
    steps: int | None
    long_batch_size: int
    long_seq_len: int
    long_steps: int | None
    long_time_share: float
    warmup_steps: int
    lr: float
    min_lr: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    time_limit_s: float
    compile: bool
    eval_tokens: int
    log_every: int

    def lr_at(self, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


def load_config(path: Path, overrides: list[str]) -> dict:
    config = json.loads(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if section not in config or field not in config[section]:
            raise SystemExit(f"--set {item}: no field {key} in {path}")
        config[section][field] = json.loads(value)
    return config


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_corpus(config: data.DataConfig) -> tuple:
    roots = data.source_roots()
    log(f"source roots: {[str(r) for r in roots]}")
    documents = data.read_documents(roots, config)
    heldout = [d for d in documents if data.is_heldout(d, config.heldout_percent)]
    train = [d for d in documents if not data.is_heldout(d, config.heldout_percent)]
    workers = os.cpu_count() or 1
    python_chars = sum(len(d.text) for d in train)
    rest = 1 - config.chat_share - config.agent_share
    # Fork the workers before the tokenizer starts its thread pool.
    chats = data.chat_documents(train, config.chat_share / rest, workers=workers)
    texts = [d.text for d in train]
    budget = int(config.agent_share / rest * python_chars)
    agents = agent_data.agent_texts(texts, budget, config.agent_seed, workers)
    heldout_agents = agent_data.agent_texts(
        [d.text for d in heldout], config.heldout_agent_bytes, config.agent_seed + 1, workers
    )
    log(f"{len(chats)} chat samples, {len(agents)} agent conversations")
    tokenizer = data.train_tokenizer(train, config, agents[: config.tokenizer_sample_conversations])
    agent_docs = [data.Document(data.digest(t), t) for t in agents]
    train_stream = data.encode(
        tokenizer, sorted(train + chats + agent_docs, key=lambda d: d.digest)
    )
    heldout_stream = data.encode(tokenizer, heldout)
    heldout_agent_stream = data.encode(tokenizer, [data.Document("", t) for t in heldout_agents])
    heldout_bytes = sum(len(d.text.encode("utf-8")) for d in heldout)
    stats = {
        "files": len(documents),
        "train_files": len(train),
        "heldout_files": len(heldout),
        "chat_samples": len(chats),
        "agent_conversations": len(agents),
        "heldout_agent_conversations": len(heldout_agents),
        "python_bytes": sum(len(d.text.encode("utf-8")) for d in train),
        "chat_bytes": sum(len(d.text.encode("utf-8")) for d in chats),
        "agent_bytes": sum(len(t.encode("utf-8")) for t in agents),
        "heldout_bytes": heldout_bytes,
        "train_tokens": int(train_stream.size),
        "heldout_tokens": int(heldout_stream.size),
        "heldout_agent_tokens": int(heldout_agent_stream.size),
        "heldout_bytes_per_token": heldout_bytes / max(1, heldout_stream.size),
    }
    streams = {
        "train": train_stream,
        "heldout": heldout_stream,
        "heldout_agent": heldout_agent_stream,
    }
    return tokenizer, streams, stats


def make_optimizer(model: Qwen3Moe, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=next(model.parameters()).is_cuda,
    )


def windows(stream: torch.Tensor, generator, batch: int, length: int) -> torch.Tensor:
    offsets = torch.randint(
        0, stream.numel() - length - 1, (batch, 1), device=stream.device, generator=generator
    )
    return stream[offsets + torch.arange(length + 1, device=stream.device)].long()  # [B, L+1]


def plan_steps(step_fns, stream, config: TrainConfig, budget: float) -> tuple[int, int, dict]:
    """Steps per phase: as configured, or sized from the time limit by timing throwaway steps."""
    if config.steps is not None and config.long_steps is not None:
        return config.steps, config.long_steps, {}
    generator = torch.Generator(device=stream.device).manual_seed(config.seed + 1)
    seconds = []
    for fn, batch, length, n in (
        (step_fns[0], config.batch_size, config.seq_len, 12),
        (step_fns[1], config.long_batch_size, config.long_seq_len, 4),
    ):
        fn(windows(stream, generator, batch, length))  # compiles; not timed
        sync(stream)
        start = time.monotonic()
        for _ in range(n):
            fn(windows(stream, generator, batch, length))
        sync(stream)
        seconds.append((time.monotonic() - start) / n)
    for p in step_fns[2].parameters():
        p.grad = None  # throwaway: no optimizer step was taken
    steps = int(budget * (1 - config.long_time_share) / seconds[0])
    long_steps = int(budget * config.long_time_share / seconds[1])
    probe = {
        "step_s": seconds[0],
        "long_step_s": seconds[1],
        "steps": steps,
        "long_steps": long_steps,
    }
    log(f"planned: {json.dumps(probe)}")
    return steps, long_steps, probe


def sync(stream: torch.Tensor) -> None:
    if stream.is_cuda:
        torch.cuda.synchronize()


def train(
    model, step_fns, optimizer, stream: torch.Tensor, config: TrainConfig, deadline: float
) -> dict:
    """Both phases; `deadline` (a time.monotonic() value) shortens training to end before it."""
    probe_start = time.monotonic()
    budget = min(config.time_limit_s, deadline - probe_start - 90)  # the probe takes ~1 min
    steps, long_steps, probe = plan_steps((*step_fns, model), stream, config, budget)
    probe_s = time.monotonic() - probe_start
    total = steps + long_steps
    generator = torch.Generator(device=stream.device).manual_seed(config.seed)
    start = time.monotonic()
    history, step, phases = [], 0, []
    for fn, batch, length, end in (
        (step_fns[0], config.batch_size, config.seq_len, steps),
        (step_fns[1], config.long_batch_size, config.long_seq_len, total),
    ):
        phase_start, phase_step = time.monotonic(), step
        last_time, last_step = phase_start, step
        while step < end and time.monotonic() < min(start + config.time_limit_s * 1.1, deadline):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step, total)
            loss, aux = fn(windows(stream, generator, batch, length))
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % config.log_every == 0 or step == end:
                loss_value, aux_value = loss.item(), aux.item()
                now = time.monotonic()
                rate = (step - last_step) * batch * length / (now - last_time)
                history.append(
                    {
                        "step": step,
                        "seq_len": length,
                        "loss": loss_value,
                        "aux": aux_value,
                        "tokens_per_s": rate,
                        "elapsed_s": now - start,
                    }
                )
                log(
                    f"step {step} L={length} loss {loss_value:.4f} aux {aux_value:.4f} "
                    f"lr {config.lr_at(step, total):.2e} {rate / 1e3:.0f}k tok/s"
                )
                last_time, last_step = now, step
        sync(stream)
        phases.append(
            {
                "seq_len": length,
                "batch_size": batch,
                "steps": step - phase_step,
                "tokens": (step - phase_step) * batch * length,
                "wall_s": time.monotonic() - phase_start,
            }
        )
    wall = time.monotonic() - start
    tokens = sum(p["tokens"] for p in phases)
    return {
        "planned_steps": [steps, long_steps],
        "probe": probe,
        "probe_wall_s": probe_s,
        "phases": phases,
        "steps": step,
        "tokens_seen": tokens,
        "train_wall_s": wall,
        "tokens_per_s": tokens / wall,
        "history": history,
        "stopped_by": "steps" if step >= total else "time_limit",
    }


@torch.no_grad()
def evaluate(
    model: Qwen3Moe, stream: torch.Tensor, length: int, max_tokens: int, batch_size: int
) -> dict:
    """Mean next-token loss over non-overlapping windows, by position too, and expert usage."""
    model.eval()
    E = model.config.num_experts
    n_windows = min(max_tokens, stream.numel() - 1) // length
    if n_windows == 0:
        return {"tokens": 0}
    starts = torch.arange(n_windows, device=stream.device) * length
    window = torch.arange(length + 1, device=stream.device)
    counts = torch.zeros(model.config.num_hidden_layers, E, device=stream.device)
    by_position = torch.zeros(length, device=stream.device, dtype=torch.float64)
    for i in range(0, n_windows, batch_size):
        batch = stream[starts[i : i + batch_size, None] + window].long()
        with torch.autocast(stream.device.type, dtype=torch.bfloat16):
            logits, router_logits = model(batch[:, :-1])
        loss = F.cross_entropy(
            logits.float().transpose(1, 2), batch[:, 1:], reduction="none"
        )  # [B, L]
        by_position += loss.sum(dim=0).double()
        for layer, logits_l in enumerate(router_logits):
            picked = logits_l.topk(model.config.num_experts_per_tok, dim=-1).indices.flatten()
            counts[layer] += torch.bincount(picked, minlength=E).float()
    model.train()
    by_position /= n_windows
    shares = counts / counts.sum(dim=1, keepdim=True)  # [layers, E]
    top = max(1, E // 5)
    mean = by_position.mean().item()
    edges = [0] + [2**k for k in range(10, 17) if 2**k < length] + [length]
    return {
        "tokens": n_windows * length,
        "window": length,
        "loss": mean,
        "perplexity": math.exp(mean),
        "loss_by_position": [
            {"from": a, "to": b, "loss": by_position[a:b].mean().item()}
            for a, b in itertools.pairwise(edges)
        ],
        "routing": {
            "top_20pct_share_per_layer": shares.sort(dim=1, descending=True)
            .values[:, :top]
            .sum(dim=1)
            .tolist(),
            "min_share_per_layer": shares.min(dim=1).values.tolist(),
            "max_share_per_layer": shares.max(dim=1).values.tolist(),
            "unused_experts_per_layer": (counts == 0).sum(dim=1).tolist(),
        },
    }


@torch.no_grad()
def greedy(model: Qwen3Moe, tokenizer, prompt: str, max_tokens: int) -> str:
    model.eval()
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    stops = {tokenizer.token_to_id(t) for t in (data.ENDOFTEXT, data.IM_END)}
    device = next(model.parameters()).device
    for _ in range(max_tokens):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, _ = model(torch.tensor([ids], device=device))
        next_id = int(logits[0, -1].argmax())
        if next_id in stops:
            break
        ids.append(next_id)
    model.train()
    return tokenizer.decode(ids, skip_special_tokens=False)


def write_checkpoint(out: Path, model: Qwen3Moe, tokenizer, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    eos = [tokenizer.token_to_id(data.IM_END), tokenizer.token_to_id(data.ENDOFTEXT)]
    pad = tokenizer.token_to_id(data.ENDOFTEXT)
    config = model.config.hf_config(eos_token_ids=eos, pad_token_id=pad)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos, "pad_token_id": pad}, indent=2) + "\n"
    )
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": data.IM_END,
        "pad_token": data.ENDOFTEXT,
        "unk_token": None,
        "additional_special_tokens": [data.IM_START, data.IM_END],
        "model_max_length": model.config.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": data.CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {
        k: tokenizer_config[k] for k in ("eos_token", "pad_token", "additional_special_tokens")
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON")
    parser.add_argument("--device", default="cuda", help="cpu only for trying the script out")
    parser.add_argument(
        "--deadline",
        type=float,
        default=math.inf,
        metavar="SECONDS",
        help="end training this long after the start, leaving a minute to save",
    )
    args = parser.parse_args()
    raw = load_config(args.config, args.set)
    model_config = ModelConfig(**raw["model"])
    data_config = data.DataConfig(**raw["data"])
    train_config = TrainConfig(**raw["train"])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train.py: no CUDA GPU here (--device cpu runs a slow trial)")

    started = time.monotonic()
    deadline = started + args.deadline - 60
    torch.manual_seed(train_config.seed)
    tokenizer, streams_np, corpus = build_corpus(data_config)
    corpus["prep_wall_s"] = time.monotonic() - started
    log(f"corpus: {json.dumps(corpus)}")

    torch.backends.cuda.matmul.allow_tf32 = True
    streams = {k: torch.from_numpy(v.astype(np.int32)).to(device) for k, v in streams_np.items()}
    model = Qwen3Moe(model_config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_params:,}")
    optimizer = make_optimizer(model, train_config)
    compiled = torch.compile(model) if train_config.compile else model
    top_k, aux_coef = model_config.num_experts_per_tok, model_config.router_aux_loss_coef

    def step_with(forward):
        def step_fn(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits, router_logits = forward(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            aux = load_balancing_loss(router_logits, top_k)
            (loss + aux_coef * aux).backward()
            return loss.detach(), aux.detach()

        return step_fn

    # The long phase runs uncompiled: its attention dominates, and a second compile costs time.
    training = train(
        model,
        (step_with(compiled), step_with(model)),
        optimizer,
        streams["train"],
        train_config,
        deadline,
    )
    metrics = {
        "config": raw,
        "parameters": n_params,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "corpus": corpus,
        "training": training,
    }
    write_checkpoint(args.out, model, tokenizer, metrics)  # saved before anything else can fail
    tc = train_config
    metrics["heldout"] = evaluate(
        model, streams["heldout"], tc.seq_len, tc.eval_tokens, tc.batch_size
    )
    metrics["heldout_agent"] = evaluate(
        model, streams["heldout_agent"], tc.seq_len, tc.eval_tokens, tc.batch_size
    )
    metrics["heldout_long"] = evaluate(
        model, streams["heldout"], tc.long_seq_len, tc.eval_tokens, tc.long_batch_size
    )
    metrics["heldout_agent_long"] = evaluate(
        model, streams["heldout_agent"], tc.long_seq_len, tc.eval_tokens, tc.long_batch_size
    )
    metrics["train_sample"] = evaluate(
        model, streams["train"], tc.seq_len, tc.eval_tokens, tc.batch_size
    )
    heldout = metrics["heldout"]
    metrics["heldout_bits_per_byte"] = (
        heldout["loss"] / math.log(2) / corpus["heldout_bytes_per_token"]
    )
    log(
        f"held-out loss {heldout['loss']:.4f} ppl {heldout['perplexity']:.2f}, agent "
        f"{metrics['heldout_agent']['loss']:.4f}, train-sample {metrics['train_sample']['loss']:.4f}"
    )
    metrics["greedy_sample"] = greedy(model, tokenizer, "def fibonacci(n):", 96)
    log(f"greedy sample:\n{metrics['greedy_sample']}")
    metrics["total_wall_s"] = time.monotonic() - started
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"wrote {args.out} in {metrics['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
