"""LoRALinear: a frozen linear plus a trainable low-rank update.

            x ──────────────► base (frozen, full precision or 4-bit) ───────┐
            │                                                               + ──► y
            └─► dropout ─► A (r x in) ─► B (out x r) ─► * scale ────────────┘

    y = W x + scale · B A dropout(x),  scale = alpha / r  (rsLoRA: alpha / sqrt(r))

A starts Kaiming-uniform and B at zero, so at step 0 the model is exactly the base model.
Only A and B train: r * (in + out) numbers instead of in * out.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha = r, alpha
        self.scale = alpha / math.sqrt(r) if use_rslora else alpha / r
        device = _device_of(base)
        # Adapters live in float32 whatever the base's dtype: tiny, and Adam needs the precision.
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device))   # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT initialise
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None  # skip the op entirely at 0
        self.merged = False
        self._base_before_merge = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        # Scale the small B (out x r) rather than the big update (tokens x out): same numbers,
        # one elementwise pass less over the output, forward and backward.
        update = F.linear(F.linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B * self.scale)
        return y + update.to(y.dtype)  # (..., out)

    def delta_weight(self) -> torch.Tensor:
        """scale · B A, the (out, in) matrix this adapter adds to W."""
        return (self.lora_B @ self.lora_A) * self.scale

    def merge(self):
        """Folds B A into the base weight. A 4-bit base is dequantized first and becomes a full
        precision linear (a merged weight cannot be stored back in 4 bits without loss); the 4-bit
        module is kept so unmerge can restore it exactly."""
        if self.merged:
            return
        if isinstance(self.base, nn.Linear):
            with torch.no_grad():
                self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        else:
            weight = self.base.dequantized_weight(torch.float32) + self.delta_weight().float()
            dense = nn.Linear(self.in_features, self.out_features, bias=False, device=weight.device)
            dense.weight = nn.Parameter(weight.to(self.base.compute_dtype), requires_grad=False)
            self._base_before_merge, self.base = self.base, dense
        self.merged = True

    def unmerge(self):
        if not self.merged:
            return
        if self._base_before_merge is not None:
            self.base, self._base_before_merge = self._base_before_merge, None
        else:
            with torch.no_grad():
                self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False


def _device_of(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")
