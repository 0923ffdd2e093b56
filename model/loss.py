"""Next-token loss that only pays for the positions that carry a target.

Labels are aligned with input_ids and hold -100 where nothing is learned (the prompt, padding).
Position t predicts token t+1, so hidden state t is scored against label t+1. The vocabulary
projection, the biggest matmul of a small model, runs only on those positions.
"""

import torch
import torch.nn.functional as F

IGNORE = -100


def target_nll(model, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood over target tokens, and how many there were.

    input_ids, labels: (B, T). Returns (scalar tensor, n_targets). Callers divide the sum by the
    number of targets in the whole accumulated batch, so every token weighs the same however the
    batch was split into micro-batches.
    """
    h = model.hidden_states(input_ids)          # (B, T, dim)
    targets = labels[:, 1:]                     # (B, T-1): what position t should predict
    keep = targets != IGNORE                    # (B, T-1)
    picked = h[:, :-1][keep]                    # (N, dim), N = number of targets
    logits = model.output(picked).float()       # (N, vocab)
    nll = F.cross_entropy(logits, targets[keep], reduction="sum")
    return nll, int(keep.sum())


def count_targets(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE).sum())
