"""Train the demo model on one CUDA GPU and write a Hugging Face checkpoint.

    python training/train.py --config training/config.json --out CHECKPOINT_DIR

builds the corpus and tokenizer (data.py), trains the qwen2_moe in model.py until `train.steps`
or `train.time_limit_s`, measures held-out loss and expert usage, and writes config.json,
model.safetensors, the tokenizer files and metrics.json into CHECKPOINT_DIR.
`--set section.key=value` overrides one configuration value (for short trial runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import data
import numpy as np
import torch
import torch.nn.functional as F
from model import ModelConfig, Qwen2Moe, hf_state_dict, load_balancing_loss
from safetensors.torch import save_file


@dataclass(slots=True, frozen=True)
class TrainConfig:
    seed: int
    batch_size: int
    seq_len: int
    steps: int
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

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
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
    # Fork the chat workers before the tokenizer starts its thread pool.
    chats = data.chat_documents(train, config.chat_share, workers=os.cpu_count() or 1)
    tokenizer = data.train_tokenizer(train, config)
    train_stream = data.encode(tokenizer, sorted(train + chats, key=lambda d: d.digest))
    heldout_stream = data.encode(tokenizer, heldout)
    heldout_bytes = sum(len(d.text.encode("utf-8")) for d in heldout)
    stats = {
        "files": len(documents),
        "train_files": len(train),
        "heldout_files": len(heldout),
        "chat_samples": len(chats),
        "train_bytes": sum(len(d.text.encode("utf-8")) for d in train + chats),
        "heldout_bytes": heldout_bytes,
        "train_tokens": int(train_stream.size),
        "heldout_tokens": int(heldout_stream.size),
        "heldout_bytes_per_token": heldout_bytes / max(1, heldout_stream.size),
    }
    return tokenizer, train_stream, heldout_stream, stats


def make_optimizer(model: Qwen2Moe, config: TrainConfig) -> torch.optim.Optimizer:
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


def train(model, step_fn, optimizer, stream: torch.Tensor, config: TrainConfig) -> dict:
    generator = torch.Generator(device=stream.device).manual_seed(config.seed)
    window = torch.arange(config.seq_len + 1, device=stream.device)
    tokens_per_step = config.batch_size * config.seq_len
    start = time.monotonic()
    last_time, last_step, step = start, 0, 0
    history = []
    while step < config.steps and time.monotonic() - start < config.time_limit_s:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        offsets = torch.randint(
            0,
            stream.numel() - config.seq_len - 1,
            (config.batch_size, 1),
            device=stream.device,
            generator=generator,
        )
        batch = stream[offsets + window].long()  # [B, L+1]
        loss, aux = step_fn(batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            loss_value, aux_value = loss.item(), aux.item()
            now = time.monotonic()
            rate = (step - last_step) * tokens_per_step / (now - last_time)
            history.append(
                {
                    "step": step,
                    "loss": loss_value,
                    "aux": aux_value,
                    "tokens_per_s": rate,
                    "elapsed_s": now - start,
                }
            )
            log(
                f"step {step} loss {loss_value:.4f} aux {aux_value:.4f} "
                f"lr {config.lr_at(step):.2e} {rate / 1e3:.0f}k tok/s"
            )
            last_time, last_step = now, step
    loss.item()  # wait for the last step
    wall = time.monotonic() - start
    return {
        "steps": step,
        "tokens_seen": step * tokens_per_step,
        "train_wall_s": wall,
        "tokens_per_s": step * tokens_per_step / wall,
        "history": history,
        "stopped_by": "steps" if step >= config.steps else "time_limit",
    }


@torch.no_grad()
def evaluate(model: Qwen2Moe, stream: torch.Tensor, config: TrainConfig) -> dict:
    """Mean next-token loss over non-overlapping windows, and how often each expert is picked."""
    model.eval()
    L, E = config.seq_len, model.config.num_experts
    n_windows = min(config.eval_tokens, stream.numel() - 1) // L
    starts = torch.arange(n_windows, device=stream.device) * L
    window = torch.arange(L + 1, device=stream.device)
    counts = torch.zeros(model.config.num_hidden_layers, E, device=stream.device)
    total_loss, total_tokens = 0.0, 0
    for i in range(0, n_windows, config.batch_size):
        batch = stream[starts[i : i + config.batch_size, None] + window].long()
        with torch.autocast(stream.device.type, dtype=torch.bfloat16):
            logits, router_logits = model(batch[:, :-1])
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += batch[:, 1:].numel()
        for layer, logits_l in enumerate(router_logits):
            picked = logits_l.topk(model.config.num_experts_per_tok, dim=-1).indices.flatten()
            counts[layer] += torch.bincount(picked, minlength=E).float()
    model.train()
    shares = counts / counts.sum(dim=1, keepdim=True)  # [layers, E]
    top = max(1, E // 5)
    loss = total_loss / max(1, total_tokens)
    return {
        "tokens": total_tokens,
        "loss": loss,
        "perplexity": math.exp(loss),
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
def greedy(model: Qwen2Moe, tokenizer, prompt: str, max_tokens: int) -> str:
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


def write_checkpoint(out: Path, model: Qwen2Moe, tokenizer, metrics: dict) -> None:
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
    args = parser.parse_args()
    raw = load_config(args.config, args.set)
    model_config = ModelConfig(**raw["model"])
    data_config = data.DataConfig(**raw["data"])
    train_config = TrainConfig(**raw["train"])
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("train.py: no CUDA GPU here (--device cpu runs a slow trial)")

    started = time.monotonic()
    torch.manual_seed(train_config.seed)
    tokenizer, train_np, heldout_np, corpus = build_corpus(data_config)
    corpus["prep_wall_s"] = time.monotonic() - started
    log(f"corpus: {json.dumps(corpus)}")

    torch.backends.cuda.matmul.allow_tf32 = True
    train_stream = torch.from_numpy(train_np.astype(np.int32)).to(device)
    heldout_stream = torch.from_numpy(heldout_np.astype(np.int32)).to(device)
    model = Qwen2Moe(model_config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_params:,}")
    optimizer = make_optimizer(model, train_config)
    forward = torch.compile(model) if train_config.compile else model
    top_k, aux_coef = model_config.num_experts_per_tok, model_config.router_aux_loss_coef

    def step_fn(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, router_logits = forward(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        aux = load_balancing_loss(router_logits, top_k)
        (loss + aux_coef * aux).backward()
        return loss.detach(), aux.detach()

    training = train(model, step_fn, optimizer, train_stream, train_config)
    heldout = evaluate(model, heldout_stream, train_config)
    train_sample = evaluate(model, train_stream, train_config)
    log(
        f"held-out loss {heldout['loss']:.4f} ppl {heldout['perplexity']:.2f}, "
        f"train-sample loss {train_sample['loss']:.4f}"
    )
    sample = greedy(model, tokenizer, "def fibonacci(n):", 96)
    log(f"greedy sample:\n{sample}")
    metrics = {
        "config": raw,
        "parameters": n_params,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "corpus": corpus,
        "training": training,
        "heldout": heldout,
        "train_sample": train_sample,
        "heldout_bits_per_byte": heldout["loss"] / math.log(2) / corpus["heldout_bytes_per_token"],
        "greedy_sample": sample,
        "total_wall_s": time.monotonic() - started,
    }
    write_checkpoint(args.out, model, tokenizer, metrics)
    log(f"wrote {args.out} in {metrics['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
