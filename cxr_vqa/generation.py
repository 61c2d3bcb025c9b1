"""Decoding settings and the streamer that splits a batched `generate` into one text per row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in 0..5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


class BatchStreamer:
    """A `generate` streamer for batches: `put` gets each step's new tokens for all rows and hands `on_text` the
    decoded text of every row so far. transformers' own streamers handle a single row only."""

    def __init__(self, tokenizer, batch_size: int, on_text: Callable[[list[str]], None]):
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate first passes the prompt itself
            self._seen_prompt = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token == self.tokenizer.eos_token_id:
                self.done[row] = True
            else:
                self.tokens[row].append(token)
        self.on_text([self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in self.tokens])

    def end(self) -> None:
        pass
