"""A scripted provider for what a real model cannot be made to do on cue: tool calls, slow
generations and failures. Everything else runs on a real `moe_runtime.Session`."""

from __future__ import annotations

import time
from types import SimpleNamespace


class ScriptedProvider:
    """Answers with fixed texts (one per call, in turn), token by token, like a model would;
    optionally slow, or failing after some tokens. Tokenizes with a real session's tokenizer
    and chat template."""

    def __init__(self, session, scripts=(), *, delay: float = 0.0, fail_after=None):
        self.session = session
        self.tokenizer, self.model_id = session.tokenizer, session.model_id
        self.scripts, self.delay, self.fail_after = list(scripts), delay, fail_after
        self.prompts: list = []
        self.options: list[dict] = []  # each generation's keyword arguments
        self.yielded = 0  # tokens handed to the server, all requests together
        self.closed = 0  # generations whose iterator the server closed before the end
        self.calls = 0

    def encode_prompt(self, prompt, tools=None, **kwargs) -> list[int]:
        return self.session.encode_prompt(prompt, tools, **kwargs)

    def stats(self, *, window: bool = True) -> dict:
        return {"hit_rate": 0.75, "bytes_read": 4096}

    def stream(self, prompt, *, max_tokens=256, tools=None, chat_template_kwargs=None, **sampling):
        self.prompts.append(prompt)
        self.options.append(
            {"max_tokens": max_tokens, "chat_template_kwargs": chat_template_kwargs, **sampling}
        )
        prompt_tokens = len(
            self.encode_prompt(prompt, tools, chat_template_kwargs=chat_template_kwargs)
        )
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
