"""One optimizer step, as train.py takes it: the optimizer and loss scaler it uses, micro-batches
through the loss with mixed precision, gradient accumulation over micro-batches and ranks,
clipping, and the evaluation loss.

    loss, n_targets, grad_norm = train_step(loss_module, micro_batches, params, optimizer, scaler,
                                            grad_clip=1.0, device=device, dtype=dtype, amp=True)

Mixed precision: with amp, the forward pass runs under torch.autocast in `dtype` (bfloat16, or
float16 with an enabled GradScaler that scales the loss so small gradients survive float16 and
skips a step whose gradients overflowed). LoRA's parameters and their gradients stay float32.
"""

import math

import torch

from model.errors import UserError
from model.loss import count_targets
from training.distributed import World, full_tensor, gradient_sync, loss_scale


def make_optimizer(optim: str, params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over `params`: torch's, or bitsandbytes' 8-bit one (optim="adamw8bit")."""
    if optim == "adamw8bit":  # the seed's choice: optimizer states in 8 bits (bitsandbytes)
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("--optim adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scaler(enabled: bool, world: World = World(), device_type: str = "cuda"):
    """float16's loss scaler (a no-op unless enabled). With FSDP each rank holds a shard of the
    gradients, so the check for inf/NaN has to be agreed across ranks: ShardedGradScaler does that."""
    if world.parallel == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        return ShardedGradScaler(device_type, enabled=enabled)
    return torch.amp.GradScaler(device_type, enabled=enabled)


def batch_nll(loss_module, batch, device, dtype, amp) -> tuple[torch.Tensor, int]:
    """(summed next-token loss over the batch's target tokens, their number)."""
    x, y = batch["input_ids"].to(device), batch["labels"].to(device)       # (B, T) each
    with torch.autocast(device.type, dtype=dtype, enabled=amp):
        return loss_module(x, y)


def train_step(loss_module, micro: list[dict], params, optimizer, scaler, grad_clip: float,
               device, dtype, amp, world: World = World()) -> tuple[float, int, float]:
    """One optimizer step over the micro-batches; returns (mean loss per target token, target
    tokens, gradient norm before clipping), all over every rank's share of the global batch."""
    n_targets = int(world.sum(sum(count_targets(b["labels"]) for b in micro))[0])  # the whole global step
    step_nll = 0.0
    for i, batch in enumerate(micro):
        # Gradients travel between ranks only on the step's last micro-batch.
        with gradient_sync(loss_module, world, sync=i == len(micro) - 1):
            nll, _ = batch_nll(loss_module, batch, device, dtype, amp)
            # Sum over tokens / tokens in the whole global batch: every target token weighs the
            # same, however the step was split into micro-batches and ranks.
            scaler.scale(nll * loss_scale(world) / n_targets).backward()
        step_nll += nll.item()
    loss = world.sum(step_nll)[0] / n_targets
    if not math.isfinite(loss):
        return loss, n_targets, float("nan")     # the caller stops; nothing is stepped
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    grad_norm = full_tensor(grad_norm)   # FSDP: the norm over all shards
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, n_targets, float(grad_norm)


@torch.no_grad()
def eval_loss(loss_module, batches, device, dtype, amp, world: World = World()) -> float:
    """Mean next-token loss per target token over the evaluation batches (of all ranks)."""
    loss_module.eval()
    total, n = 0.0, 0
    for batch in batches:
        nll, k = batch_nll(loss_module, batch, device, dtype, amp)
        total, n = total + float(nll), n + k
    loss_module.train()
    total, n = world.sum(total, n)
    return total / max(n, 1)
