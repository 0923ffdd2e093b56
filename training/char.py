"""The char-RNN / char-LSTM baselines' training loop (train.py --arch rnn|lstm); the networks,
their vocabulary, bits per character and sampling are in model/rnn.py.

    row texts -> one string -> random windows of seq_len + 1 characters (B, T+1)
              -> next-character cross-entropy -> AdamW, cosine learning rate, clip 1
              -> OUT/char_model.pt + OUT/metrics.jsonl (bits per character as it goes)
"""

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.errors import UserError
from model.rnn import (METRICS_NAME, CharConfig, CharModel, CharVocab, bits_per_char, save_char_model,
                       unigram_bits_per_char)


def _lr_at(step: int, config: CharConfig) -> float:
    """Cosine decay from lr at step 1 to lr/10 at the last step."""
    progress = (step - 1) / max(1, config.steps - 1)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_char_model(train_texts: list[str], eval_texts: list[str], config: CharConfig,
                     out_dir: str | Path, log: Callable[[str], None] = print,
                     device: str = "cpu") -> dict:
    """Train on row texts (see row_text) and write out_dir/char_model.pt and metrics.jsonl.

    Each step takes batch_size random windows of seq_len + 1 characters from the
    concatenated training rows, starts them from a zero state (truncated backpropagation
    through time), and takes one AdamW step on the mean next-character loss, with the
    gradient norm clipped to 1. Returns {"val_bpc", "train_bpc", "unigram_bpc", "steps",
    "params", "seconds"}. On the CPU, the same seed and inputs give the same model;
    `device` can be "cuda", though these models train in a minute or two on a CPU.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_text, eval_text = "".join(train_texts), "".join(eval_texts)
    if len(train_text) < config.seq_len + 1:
        raise UserError(f"the training rows hold {len(train_text)} characters, fewer than "
                        f"seq_len + 1 = {config.seq_len + 1}; add rows or lower seq_len")

    torch.manual_seed(config.seed)                      # weights and dropout masks
    windows = torch.Generator().manual_seed(config.seed)   # where the windows start
    vocab = CharVocab.build(train_text)
    data = torch.tensor(vocab.encode(train_text))
    model = CharModel(len(vocab), config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    n_params = sum(p.numel() for p in model.parameters())
    unigram = unigram_bits_per_char(train_text, eval_text) if eval_text else None
    log(f"char-{config.arch}: {n_params:,} parameters, vocabulary {len(vocab)}, "
        f"{len(train_text):,} training characters"
        + (f", unigram baseline {unigram:.3f} bits/char" if unigram is not None else ""))

    offsets = torch.arange(config.seq_len + 1)          # (T+1,)
    started = time.time()
    val_bpc, recent = None, []
    with open(out_dir / METRICS_NAME, "w", encoding="utf-8") as metrics:
        for step in tqdm(range(1, config.steps + 1), desc=f"char-{config.arch}", disable=None):
            lr = _lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # The last window that fits starts at len(data) - (seq_len + 1); randint's
            # upper bound is exclusive.
            starts = torch.randint(0, len(data) - config.seq_len, (config.batch_size,),
                                   generator=windows)                     # (B,)
            window = data[starts[:, None] + offsets].to(device)           # (B, T+1)
            x, y = window[:, :-1], window[:, 1:]                          # (B, T) each
            logits, _ = model(x)                                          # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            recent.append(loss.item() / math.log(2))

            if step % config.eval_every == 0 or step == config.steps:
                train_bpc = sum(recent) / len(recent)
                recent = []
                val_bpc = bits_per_char(model, vocab, eval_text) if eval_text else None
                record = {"step": step, "train_bpc": round(train_bpc, 4),
                          "val_bpc": None if val_bpc is None else round(val_bpc, 4),
                          "lr": lr, "elapsed_s": round(time.time() - started, 1)}
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                log(f"step {step}: train {train_bpc:.3f} bits/char"
                    + (f", validation {val_bpc:.3f}" if val_bpc is not None else ""))

    save_char_model(model, vocab, out_dir)
    return {"val_bpc": val_bpc, "train_bpc": train_bpc, "unigram_bpc": unigram,
            "steps": config.steps, "params": n_params,
            "seconds": round(time.time() - started, 1)}
