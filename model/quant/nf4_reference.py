"""NF4 with double quantization in its plainest form: read this first.

model/quant/nf4.py stores the same format and is what the project runs: it is bit-exact with
bitsandbytes (it finds nearest codes the way bitsandbytes' CPU kernel does, through a grid) and
fast on large matrices. This file only says what the format means, one step a line:

    weight (out, in), flattened row by row, cut into blocks of 64
      -> absmax: each block's largest |value|                              (n_blocks,)
      -> q4: each value / its block's absmax, as the nearest of the 16 NF4 values   (n,)
    absmax - its mean ("offset"), cut into blocks of 256
      -> nested: each block's largest |value|                              (n_blocks / 256,)
      -> q8: each centred absmax / its block's nested, as the nearest of the 256 dynamic values
    dequantize: absmax = DYNAMIC[q8] * nested + offset;  weight = NF4[q4] * absmax

tests/test_quant.py checks that this and model/quant/nf4.py agree, and names where they differ.
"""

import torch
from torch import Tensor

from model.quant.nf4 import NF4_CODE, create_dynamic_map

NF4 = torch.tensor(NF4_CODE)          # (16,) quantiles of N(0, 1) scaled to [-1, 1]; NF4[7] = 0
DYNAMIC = create_dynamic_map()        # (256,) bitsandbytes' signed 8-bit code for the absmax values


def nearest(values: Tensor, code: Tensor) -> Tensor:
    """(n,) index of the code value nearest each value (the lower one on an exact tie)."""
    return (values[:, None] - code[None, :]).abs().argmin(dim=1)


def blockwise(x: Tensor, blocksize: int) -> Tensor:
    """Flat x, zero-padded to whole blocks: (n_blocks, blocksize)."""
    n_blocks = -(-x.numel() // blocksize)
    return torch.cat([x, x.new_zeros(n_blocks * blocksize - x.numel())]).view(n_blocks, blocksize)


def quantize(w: Tensor, blocksize: int = 64, nested_blocksize: int = 256):
    """(q4 (n,), q8 (n_blocks,), nested (n_blocks / 256,), offset ()) for a weight."""
    flat = w.detach().float().flatten()                                # (n,)
    blocks = blockwise(flat, blocksize)                                # (n_blocks, 64)
    absmax = blocks.abs().amax(dim=1).clamp(min=1e-38)                 # (n_blocks,)
    q4 = nearest((blocks / absmax[:, None]).flatten(), NF4)[:flat.numel()]

    offset = absmax.mean()                                             # double quantization
    centred = blockwise(absmax - offset, nested_blocksize)             # (n_nested, 256)
    nested = centred.abs().amax(dim=1)                                 # (n_nested,)
    scaled = centred / torch.where(nested > 0, nested, torch.ones_like(nested))[:, None]
    q8 = nearest(scaled.flatten(), DYNAMIC)[:absmax.numel()]
    return q4, q8, nested, offset


def dequantize(q4: Tensor, q8: Tensor, nested: Tensor, offset: Tensor, shape: tuple,
               blocksize: int = 64, nested_blocksize: int = 256) -> Tensor:
    """The weight back, float32, from what quantize() returned."""
    absmax = DYNAMIC[q8] * nested.repeat_interleave(nested_blocksize)[:q8.numel()] + offset
    return (NF4[q4] * absmax.repeat_interleave(blocksize)[:q4.numel()]).view(shape)
