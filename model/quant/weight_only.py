"""Weight-only int4 and int8 linears for inference: fewer bytes to read per generated token.

A batch-1 decode step reads every weight once, so its speed is set by how many bytes the weights
take. These layers keep weights as small integers and let torch's own kernels multiply with them
directly, without building a float weight first:

    Int4Linear   4-bit codes q in 0..15 per weight, and per group of `group` input features a
                 float scale and zero:  w = (q - 8) * scale + zero      (asymmetric, min/max)
                 torch.ops.aten._weight_int4pack_mm(_for_cpu)(x, packed, group, scales_and_zeros)
    Int8Linear   int8 codes per weight and one float scale per output row:  w = q * scale
                 torch.ops.aten._weight_int8pack_mm(x, q, scales)

The idea is gpt-fast's: swap each nn.Linear for one of these after the model is loaded
(quantize_for_inference). Training keeps nn.Linear / Linear4bit; these layers have no backward.

Both kernels multiply in bfloat16: the activations are cast to bfloat16 on the way in and the
result back to the model's dtype on the way out, and the scales and zeros are stored in
bfloat16. On CPU that is the kernels' fast path (torch 2.13 has vectorised bfloat16 kernels for
them; float32 activations take a plain reference path). On CUDA the int4 kernel takes bfloat16
only.

The embedded model's GGUF stores its linears as Q4_1: per 32 weights an fp16 scale d and minimum
m, w = d * q + m. That is an asymmetric int4 group of 32, so the blocks load into Int4Linear with
no second rounding (from_q4_1): scale = d, zero = m + 8 d.
"""

import torch
import torch.nn as nn
from torch import Tensor

from model.errors import UserError

GROUP = 32            # input features per int4 scale/zero: Q4_1's block, and gpt-fast's default
COMPUTE_DTYPE = torch.bfloat16   # what the kernels multiply in (see above)
INT4_GROUPS = (32, 64, 128, 256)
INNER_TILES = 8       # the CUDA int4 layout's inner k tiles (torch's _convert_weight_to_int4pack)


def quantize_int4(w: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """w (N, K) -> codes (N, K) int32 in 0..15, scale (N, K/group), zero (N, K/group), all from
    each group's min and max: w ~ (q - 8) * scale + zero."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.reshape(n, k), scale, lo + 8 * scale


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """w (N, K) -> codes (N, K) int8 and one scale per row: w ~ q * scale (symmetric)."""
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def q4_1_blocks(raw: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """GGUF Q4_1 bytes -> codes (N, K) int32, d (N, K/32), m (N, K/32), float32.

    One block is 20 bytes: d (fp16), m (fp16), then 16 bytes holding 32 codes; byte j's low
    nibble is element j and its high nibble element j + 16. The value is d * q + m."""
    n, k = shape
    blocks = raw.reshape(n, k // 32, 20)                                  # (N, K/32, 20) uint8
    d = blocks[..., 0:2].contiguous().view(torch.float16)[..., 0].float()
    m = blocks[..., 2:4].contiguous().view(torch.float16)[..., 0].float()
    qs = blocks[..., 4:].to(torch.int32)                                  # (N, K/32, 16)
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1)                           # (N, K/32, 32)
    return q.reshape(n, k), d, m


def check_int4_shape(n: int, k: int, group: int) -> None:
    """The int4 kernels want K in whole groups and N in whole tiles of 16 rows."""
    if group not in INT4_GROUPS or k % group or n % 16:
        raise UserError(f"--quantize int4: a {n} x {k} weight does not split into groups of "
                        f"{group} input features and tiles of 16 output rows; use --quantize int8")


def _int4_kernel(device: torch.device):
    """(pack, matmul) for the int4 layout on this device; a UserError where torch has none."""
    ops = torch.ops.aten
    if device.type == "cpu" and hasattr(ops, "_weight_int4pack_mm_for_cpu"):
        return (lambda q: ops._convert_weight_to_int4pack_for_cpu(q, 1),
                ops._weight_int4pack_mm_for_cpu)
    if device.type == "cuda" and hasattr(ops, "_weight_int4pack_mm"):
        # the CUDA kernel wants the codes two to a byte first, high nibble first
        return (lambda q: ops._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                          INNER_TILES),
                ops._weight_int4pack_mm)
    raise UserError(f"--quantize int4: torch {torch.__version__} has no int4 weight kernel for "
                    f"{device.type}; use --quantize int8 or none")


class Int4Linear(nn.Module):
    """y = x @ W.T (+ bias) with W in 4-bit groups: `packed` (torch's kernel layout) and
    `scales_and_zeros` (K/group, N, 2), in the compute dtype."""

    def __init__(self, q: Tensor, scale: Tensor, zero: Tensor, bias: Tensor | None, group: int):
        super().__init__()
        n, k = q.shape
        check_int4_shape(n, k, group)
        self.in_features, self.out_features, self.group = k, n, group
        pack, self._matmul = _int4_kernel(q.device)
        self.register_buffer("packed", pack(q.to(torch.int32).contiguous()))
        sz = torch.stack([scale.t(), zero.t()], dim=-1)                    # (K/group, N, 2)
        self.register_buffer("scales_and_zeros", sz.to(COMPUTE_DTYPE).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int = GROUP) -> "Int4Linear":
        check_int4_shape(linear.out_features, linear.in_features, group)
        q, scale, zero = quantize_int4(linear.weight.detach(), group)
        return cls(q, scale, zero, linear.bias, group)

    @classmethod
    def from_q4_1(cls, q: Tensor, d: Tensor, m: Tensor) -> "Int4Linear":
        """GGUF Q4_1 codes and statistics (q4_1_blocks): the same codes, not rounded again; only
        the scale d and the zero m + 8 d are rounded, to bfloat16."""
        return cls(q, d, m + 8 * d, None, 32)

    def forward(self, x: Tensor) -> Tensor:                               # x (..., K)
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, shape[-1]).to(COMPUTE_DTYPE)
        y = self._matmul(x, self.packed, self.group, self.scales_and_zeros).to(dtype)  # (tokens, N)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def dequantize(self) -> Tensor:
        """The float weight (N, K) this layer multiplies by, read back through its own kernel."""
        eye = torch.eye(self.in_features, dtype=COMPUTE_DTYPE, device=self.packed.device)
        return self._matmul(eye, self.packed, self.group, self.scales_and_zeros).t().float()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}"


class Int8Linear(nn.Module):
    """y = x @ W.T (+ bias) with W as int8 codes and one scale per output row."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None):
        super().__init__()
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            raise UserError(f"--quantize int8: torch {torch.__version__} has no int8 weight kernel")
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scales", scale.to(COMPUTE_DTYPE))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q, scale = quantize_int8(linear.weight.detach())
        return cls(q, scale, linear.bias)

    def forward(self, x: Tensor) -> Tensor:                               # x (..., K)
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, shape[-1]).to(COMPUTE_DTYPE)
        y = torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales).to(dtype)   # (tokens, N)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def dequantize(self) -> Tensor:
        """The float weight (N, K): codes times the bfloat16 row scales."""
        return self.weight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def quantize_for_inference(model: nn.Module, kind: str, q4_1: dict | None = None,
                           group: int = GROUP) -> None:
    """Makes a loaded Llama's linears int4 or int8 (kind), lm_head included, in place, after
    fusing q/k/v and gate/up (Llama.fuse_projections: fewer, larger products per step).

    lm_head is int8 in both kinds: the output layer is where 4 bits cost the most. On the
    embedded model, int4 blocks with an int4 head raise the perplexity of the bundled evaluation
    answers by 5%, and with an int8 head by 0.2%, for a little speed (bench/bench_generate.py shows
    both). A tied output layer gets its own int8 copy of the embedding
    matrix (the embedding lookup keeps reading floats: one row per token). q4_1 maps module
    names to GGUF Q4_1 blocks (q4_1_blocks) that load with their codes unchanged."""
    device = model.embed_tokens.weight.device
    dtype = model.embed_tokens.weight.dtype
    model.fuse_projections()                  # 4 products per block instead of 7
    q4_1 = _fused_blocks(q4_1) if q4_1 else None
    if model.lm_head is None:
        model.lm_head = nn.Linear(model.config.dim, model.config.vocab_size, bias=False,
                                  device=device, dtype=dtype)
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach(), requires_grad=False)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is not nn.Linear:
                continue
            if full == "lm_head" or kind == "int8":
                new = Int8Linear.from_linear(child)
            elif q4_1 and full in q4_1:
                q, d, m = (t.to(device) for t in q4_1[full])
                new = Int4Linear.from_q4_1(q, d, m)
            else:
                new = Int4Linear.from_linear(child, group)
            setattr(module, child_name, new)


def _fused_blocks(q4_1: dict) -> dict:
    """Q4_1 blocks of q/k/v and gate/up stacked like Llama.fuse_projections stacks the weights."""
    fused = dict(q4_1)   # o_proj and down_proj stay as they are
    for name in q4_1:
        for one, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")),
                           ("gate_up_proj", ("gate_proj", "up_proj"))):
            if name.endswith("." + parts[0]):
                prefix = name[: -len(parts[0])]
                fused[prefix + one] = tuple(torch.cat(t) for t in zip(*(q4_1[prefix + p] for p in parts)))
                for p in parts:
                    del fused[prefix + p]
    return fused
