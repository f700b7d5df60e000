"""Test providers: the Session interface over a plain mlx-lm model, and a scripted one for
tool calls, slow generations and failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

# MLX is not thread-safe and several test servers share one model: one generation at a time.
_MODEL_LOCK = threading.Lock()


class ModelProvider:
    """The Session interface over a plain mlx-lm model (mlx_lm.load + stream_generate)."""

    def __init__(self, path: Path):
        self.model, self.tokenizer = mlx_lm.load(str(path))
        self.model_id = path.name
        self.prompts: list = []
        self.yielded = 0  # tokens handed to the server, all requests together
        self.closed = 0  # generations whose iterator the server closed before the end

    def encode_prompt(self, prompt, tools=None) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return list(prompt)
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        text = self.tokenizer.apply_chat_template(
            prompt, tools=tools, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def stream(
        self,
        prompt,
        *,
        max_tokens=256,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repetition_penalty=None,
        seed=None,
        stop=None,
        tools=None,
    ):
        self.prompts.append(prompt)
        ids = self.encode_prompt(prompt, tools)
        with _MODEL_LOCK:
            if seed is not None:
                mx.random.seed(seed)
            sampler = make_sampler(temp=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
            finished = False
            try:
                for response in stream_generate(
                    self.model, self.tokenizer, ids, max_tokens=max_tokens, sampler=sampler
                ):
                    self.yielded += 1
                    finished = response.finish_reason is not None
                    yield response
            finally:
                if not finished:
                    self.closed += 1

    def stats(self) -> dict:
        return {"hit_rate": 0.75, "bytes_read": 4096}


class ScriptedProvider(ModelProvider):
    """Answers with fixed texts (one per call, in turn), token by token, like a model would;
    optionally slow, or failing after some tokens."""

    def __init__(self, base: ModelProvider, scripts=(), *, delay: float = 0.0, fail_after=None):
        self.model, self.tokenizer, self.model_id = base.model, base.tokenizer, base.model_id
        self.scripts, self.delay, self.fail_after = list(scripts), delay, fail_after
        self.prompts, self.yielded, self.closed, self.calls = [], 0, 0, 0

    def stream(self, prompt, *, max_tokens=256, tools=None, **sampling):
        self.prompts.append(prompt)
        prompt_tokens = len(self.encode_prompt(prompt, tools))
        script = self.scripts[self.calls % len(self.scripts)] if self.scripts else "word " * 1000
        self.calls += 1
        ids = self.tokenizer.encode(script, add_special_tokens=False)
        detokenizer = self.tokenizer.detokenizer
        detokenizer.reset()
        finished = False
        try:
            for n, token in enumerate(ids[:max_tokens], start=1):
                if self.fail_after is not None and n > self.fail_after:
                    raise RuntimeError("scripted failure in the middle of a generation")
                time.sleep(self.delay)
                detokenizer.add_token(token)
                last = n == len(ids) or n == max_tokens
                if last:
                    detokenizer.finalize()
                reason = ("stop" if n == len(ids) else "length") if last else None
                self.yielded += 1
                finished = last
                yield SimpleNamespace(
                    text=detokenizer.last_segment,
                    token=token,
                    prompt_tokens=prompt_tokens,
                    generation_tokens=n,
                    generation_tps=100.0,
                    finish_reason=reason,
                )
        finally:
            if not finished:
                self.closed += 1
