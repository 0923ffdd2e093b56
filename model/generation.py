"""Autoregressive decoding with a KV cache: greedy, temperature, top-k and top-p sampling.

    prompt ids --prefill (one forward over the whole prompt, fills the cache)--> logits[-1]
      loop: pick a token from the logits; stop on a stop id or the token budget;
            forward that one token at position start_pos (reads the cache)
"""

from dataclasses import dataclass
from typing import Iterator

import torch


# Below this temperature, sampling is greedy: logits / 1e-300 overflow to inf and softmax to NaN,
# and at 1e-5 the most likely token already has all the mass for any real model's logits.
MIN_TEMPERATURE = 1e-5


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0   # 0 (or below MIN_TEMPERATURE) = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off; 0 keeps only the most likely token (greedy)
    seed: int | None = None


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> int:
    """logits (vocab,) -> one token id. Never hands multinomial a NaN: a temperature or top_p
    that leaves nothing to sample from, and logits that are not finite, decode greedily."""
    if not cfg.temperature >= MIN_TEMPERATURE or not cfg.top_p > 0 or cfg.top_k == 1:
        return int(torch.argmax(logits))
    scaled = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(scaled, min(cfg.top_k, scaled.shape[-1])).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if cfg.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always the first).
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = mass_before >= cfg.top_p
        drop[0] = False
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        return int(torch.argmax(logits))  # NaN/inf logits (an overflowed model): nothing to sample
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class GenerationResult:
    ids: list[int]          # the new tokens, without the stop token
    stopped: bool           # True when a stop token ended it (not the token budget)
    prompt_tokens: int


@torch.inference_mode()
def generate_stream(model, prompt_ids: list[int], cfg: SamplingConfig,
                    stop_ids: list[int] | tuple = (), result: GenerationResult | None = None
                    ) -> Iterator[int]:
    """Yields new token ids one by one. When given, `result` is filled in as decoding goes."""
    device = model.embed_tokens.weight.device
    n_prompt = len(prompt_ids)
    budget = min(cfg.max_new_tokens, model.config.max_seq_len - n_prompt)
    if budget <= 0:
        raise ValueError(f"the prompt has {n_prompt} tokens; the model's context is "
                         f"{model.config.max_seq_len}")
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stop = set(stop_ids)
    result = result if result is not None else GenerationResult([], False, n_prompt)
    result.prompt_tokens = n_prompt

    model.setup_cache(1, n_prompt + budget)
    try:
        tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
        # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
        logits = model.output(model.hidden_states(tokens, start_pos=0)[0, -1])  # (vocab,)
        pos = n_prompt
        for _ in range(budget):
            token = sample_next(logits, cfg, generator)
            if token in stop:
                result.stopped = True
                return
            result.ids.append(token)
            yield token
            if len(result.ids) == budget:
                return
            token_ids = torch.tensor([[token]], device=device)                 # (1, 1)
            if model.compiled_decode is not None:   # model/compile.py
                logits = model.compiled_decode(token_ids, torch.tensor([pos], device=device))[0]
            else:
                logits = model(token_ids, start_pos=pos)[0, -1]
            pos += 1
    finally:
        model.clear_cache()


def generate(model, prompt_ids: list[int], cfg: SamplingConfig, stop_ids=()) -> GenerationResult:
    result = GenerationResult([], False, len(prompt_ids))
    for _ in generate_stream(model, prompt_ids, cfg, stop_ids, result):
        pass
    return result


class TextStream:
    """Turns a stream of token ids into text pieces that are always whole UTF-8 characters
    (one emoji can span several byte-level tokens)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending = b""

    def push(self, token: int) -> str:
        self.pending += self.tokenizer.decode_bytes([token])
        try:
            text, self.pending = self.pending.decode("utf-8"), b""
            return text
        except UnicodeDecodeError as e:
            if e.start == 0 and len(self.pending) < 4:
                return ""  # an incomplete character: wait for the next token
            text = self.pending[:e.start].decode("utf-8")
            self.pending = self.pending[e.start:]
            if len(self.pending) >= 4:  # not a prefix of a valid character: give up on it
                text += self.pending.decode("utf-8", errors="replace")
                self.pending = b""
            return text

    def flush(self) -> str:
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text
