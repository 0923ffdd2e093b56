"""Next-token loss that only pays for the positions that carry a target.

Labels are aligned with input_ids and hold -100 where nothing is learned (the prompt, padding).
Position t predicts token t+1, so hidden state t is scored against label t+1. The vocabulary
projection, the biggest matmul of a small model, runs only on those positions.

With a large vocabulary the logits are the biggest tensor of a training step: Llama-3's 128,256
entries for 2 x 2048 target positions are 2.1 GB in float32, and cross-entropy keeps a float32
copy and a gradient of the same size. So when the logits would pass CHUNK_LOGITS numbers, the
projection and the loss run chunk by chunk under activation checkpointing: each chunk's logits
are freed as soon as its loss is known and computed again in backward. That costs one extra
vocabulary matmul and holds at most CHUNK_LOGITS logits at a time (Llama-3: 523 positions).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
CHUNK_LOGITS = 2**26  # logits per chunk: 256 MiB in float32


def chunk_rows(vocab_size: int) -> int:
    """Target positions per chunk of the vocabulary projection."""
    return max(1, CHUNK_LOGITS // vocab_size)


def target_nll(model, input_ids: torch.Tensor, labels: torch.Tensor,
               chunk_size: int | None = None) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood over target tokens, and how many there were.

    input_ids, labels: (B, T). Returns (scalar tensor, n_targets). Callers divide the sum by the
    number of targets in the whole accumulated batch, so every token weighs the same however the
    batch was split into micro-batches.
    """
    h = model.hidden_states(input_ids)          # (B, T, dim)
    targets = labels[:, 1:]                     # (B, T-1): what position t should predict
    keep = targets != IGNORE_INDEX              # (B, T-1)
    picked = h[:, :-1][keep]                    # (N, dim), N = number of targets
    wanted = targets[keep]                      # (N,)
    n = picked.shape[0]
    chunk_size = chunk_size or chunk_rows(model.config.vocab_size)
    if n <= chunk_size:
        return chunk_nll(model, picked, wanted), n
    recompute = torch.is_grad_enabled() and picked.requires_grad  # training: recompute in backward
    parts = []
    for start in range(0, n, chunk_size):
        h_part, t_part = picked[start:start + chunk_size], wanted[start:start + chunk_size]
        if recompute:
            parts.append(checkpoint(chunk_nll, model, h_part, t_part, use_reentrant=False))
        else:
            parts.append(chunk_nll(model, h_part, t_part))
    return torch.stack(parts).sum(), n


def chunk_nll(model, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """h (N, dim), targets (N,) -> the summed cross-entropy, a float32 scalar."""
    logits = model.output(h).float()            # (N, vocab)
    return F.cross_entropy(logits, targets, reduction="sum")


def count_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class TargetLoss(nn.Module):
    """target_nll as a module, wrapping the model: forward(input_ids, labels) -> (summed loss,
    number of targets). DDP and FSDP hook into a module's call, so this is what they wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return target_nll(self.model, input_ids, labels)
