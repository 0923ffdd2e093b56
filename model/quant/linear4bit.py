"""Linear4bit: a frozen linear layer whose weight is stored in NF4 (model/quant/nf4.py).

The layer keeps only the packed 4-bit bytes and their quantization statistics, all as buffers,
and rebuilds the float weight on the fly, in forward and again in backward:

    x ──► x.to(compute_dtype) ──► x @ dequantize(packed, state)^T (+ bias) ──► y.to(x.dtype)

so a frozen base model costs ~4.13 bits per weight during QLoRA training. Its state_dict is
bitsandbytes' layout, and replace_linears_with_4bit / replace_4bit_with_linears swap a whole
model's linears one way or the other.
"""

from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from model.errors import UserError
from model.quant.nf4 import (BLOCKSIZE, NESTED_BLOCKSIZE, STAT_SUFFIXES, TENSOR_FIELDS, QuantState, dequantizer,
                         quant_state_from_tensors, quant_state_to_tensors, quantize_nf4)



# ----------------------------------------------------------------------------- the layer
BACKENDS = ("auto", "torch", "bitsandbytes")


class _MatmulNF4(torch.autograd.Function):
    """y = x W^T with W rebuilt from 4 bits. Backward rebuilds W again rather than keeping it,
    so only the packed bytes are saved; W is frozen, so only x gets a gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, packed: Tensor, state: QuantState, dequantize: Callable) -> Tensor:
        ctx.save_for_backward(packed, *state.tensors())
        ctx.layout, ctx.dequantize = state.layout(), dequantize
        return torch.nn.functional.linear(x, dequantize(packed, state, x.dtype))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        packed, *tensors = ctx.saved_tensors
        weight = ctx.dequantize(packed, QuantState(*tensors, *ctx.layout), grad_out.dtype)  # (out, in)
        return grad_out @ weight, None, None, None                                          # (..., in)


class Linear4bit(nn.Module):
    """A frozen linear layer stored in NF4. Every tensor is a buffer (no parameters), so the
    optimizer never sees it and `.to(device)` moves it. Build it with from_linear, from_weight or
    from_quantized, or empty (e.g. on "meta") and fill it with quantize_ / load_quantized."""

    _STATS = TENSOR_FIELDS               # QuantState's tensors, kept here as buffers of the same names

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 compute_dtype: torch.dtype = torch.bfloat16, blocksize: int = BLOCKSIZE,
                 device=None, backend: str = "auto"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self.compute_dtype, self.blocksize = compute_dtype, blocksize
        self.weight_dtype, self.nested_blocksize = compute_dtype, NESTED_BLOCKSIZE
        # Which dequantizer runs: "torch" (model/quant/nf4.py), "bitsandbytes" (its kernel, the same
        # numbers), or "auto" (bitsandbytes when it is installed and the device is cpu or cuda).
        if backend not in BACKENDS:
            raise UserError(f"backend '{backend}' is not one of {', '.join(BACKENDS)}")
        self.backend = backend
        n = in_features * out_features
        n_blocks = -(-n // blocksize)
        empty = lambda size, dtype: torch.empty(size, dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("weight", empty(((n + 1) // 2, 1), torch.uint8))
        self.register_buffer("absmax", empty(n_blocks, torch.uint8))
        self.register_buffer("nested_absmax", empty(-(-n_blocks // NESTED_BLOCKSIZE), torch.float32))
        self.register_buffer("nested_code", empty(256, torch.float32))
        self.register_buffer("offset", empty((), torch.float32))
        self.register_buffer("code", empty(16, torch.float32))
        self.register_buffer("bias", empty(out_features, compute_dtype) if bias else None)

    # ---- constructors
    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None,
                    compute_dtype: torch.dtype | None = None, **kwargs) -> "Linear4bit":
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias=bias is not None,
                    compute_dtype=compute_dtype or weight.dtype, device="meta", **kwargs)
        return layer.quantize_(weight, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype | None = None,
                    **kwargs) -> "Linear4bit":
        return cls.from_weight(linear.weight, linear.bias, compute_dtype, **kwargs)

    @classmethod
    def from_quantized(cls, packed: Tensor, state: QuantState, bias: Tensor | None = None,
                       compute_dtype: torch.dtype | None = None, **kwargs) -> "Linear4bit":
        out_features, in_features = state.shape
        layer = cls(in_features, out_features, bias=bias is not None, blocksize=state.blocksize,
                    compute_dtype=compute_dtype or state.dtype, device="meta", **kwargs)
        return layer.load_quantized(packed, state, bias)

    # ---- filling
    def quantize_(self, weight: Tensor, bias: Tensor | None = None) -> "Linear4bit":
        """Quantizes `weight` (out, in) into this layer, on weight's device."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"weight has shape {tuple(weight.shape)}, this layer needs {self.weight_shape}")
        packed, state = quantize_nf4(weight, self.blocksize)
        return self.load_quantized(packed, state, bias)

    def load_quantized(self, packed: Tensor, state: QuantState, bias: Tensor | None = None) -> "Linear4bit":
        """Takes (packed, state) as they are (no copy; they may sit on any device)."""
        if tuple(state.shape) != self.weight_shape:
            raise ValueError(f"quantized weight has shape {tuple(state.shape)}, "
                             f"this layer needs {self.weight_shape}")
        if packed.numel() != self.weight.numel():
            raise ValueError(f"packed weight has {packed.numel()} bytes, "
                             f"shape {self.weight_shape} needs {self.weight.numel()}")
        self.weight = packed.reshape(-1, 1)
        for name, tensor in zip(self._STATS, state.tensors()):
            setattr(self, name, tensor)
        self.weight_dtype = state.dtype
        self.blocksize, self.nested_blocksize = state.blocksize, state.nested_blocksize
        if bias is not None:
            if self.bias is None or bias.shape != (self.out_features,):
                raise ValueError(f"this layer takes no bias of shape {tuple(bias.shape)}")
            self.bias = bias.detach().to(self.compute_dtype)
        return self

    def load_packed(self, prefix: str, tensors: dict[str, Tensor], source: str, device=None) -> "Linear4bit":
        """Loads the bitsandbytes tensors of weight `prefix` (see quant_state_from_tensors)."""
        packed, state = quant_state_from_tensors(prefix, tensors, source)
        if tuple(state.shape) != self.weight_shape:
            raise UserError(f"{source}: '{prefix}' has shape {list(state.shape)}, "
                            f"config.json implies {list(self.weight_shape)}")
        if device is not None:
            packed, state = packed.to(device), state.to(device)
        return self.load_quantized(packed, state)

    # ---- use
    @property
    def quant_state(self) -> QuantState:
        return QuantState(*(getattr(self, name) for name in self._STATS), self.weight_shape,
                          self.weight_dtype, self.blocksize, self.nested_blocksize)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The (out, in) float weight, in `dtype` (default: the dtype it was quantized from)."""
        dequantize = dequantizer(self.backend, self.weight.device)
        return dequantize(self.weight, self.quant_state, dtype or self.weight_dtype)

    def forward(self, x: Tensor) -> Tensor:
        dequantize = dequantizer(self.backend, x.device)
        y = _MatmulNF4.apply(x.to(self.compute_dtype), self.weight, self.quant_state, dequantize)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}, nf4")

    # ---- nn.Module plumbing
    def _apply(self, fn, recurse=True):
        """model.half() / .to(bfloat16) must not round the float32 statistics: they follow the
        device of a move but keep their dtype and values."""
        before = {name: getattr(self, name) for name in ("nested_absmax", "nested_code", "offset", "code")}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            self._buffers[name] = new.float() if old.is_meta else old.to(new.device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """state_dict() in bitsandbytes' layout: `weight`, `weight.absmax`, ..., `bias`."""
        for key, tensor in quant_state_to_tensors(prefix + "weight", self.weight, self.quant_state).items():
            destination[key] = tensor if keep_vars else tensor.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight_key = prefix + "weight"
        ours = {weight_key, prefix + "bias"} | {f"{weight_key}.{suffix}" for suffix in STAT_SUFFIXES}
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in ours
                               and "." not in k[len(prefix):].removeprefix("weight."))
        if weight_key not in state_dict:
            missing_keys.append(weight_key)
            return
        try:
            packed, state = quant_state_from_tensors(weight_key, state_dict, source="state_dict")
            if not self.weight.is_meta:
                packed, state = packed.to(self.weight.device), state.to(self.weight.device)
            bias = state_dict.get(prefix + "bias")
            if self.bias is not None and bias is None:
                missing_keys.append(prefix + "bias")
            self.load_quantized(packed, state, bias if self.bias is not None else None)
        except (UserError, ValueError) as e:
            error_msgs.append(str(e))


# ----------------------------------------------------------------------------- whole models
def replace_linears_with_4bit(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
                              skip: tuple[str, ...] = ("lm_head",), backend: str = "auto") -> int:
    """Swaps every nn.Linear (except those named in `skip`) for an empty Linear4bit of the same
    shape on the same device (typically "meta", before loading). Returns how many it swapped."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in skip:
            parent_name, _, child = name.rpartition(".")
            layer = Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                               compute_dtype=compute_dtype, device=module.weight.device, backend=backend)
            setattr(model.get_submodule(parent_name), child, layer)
            swapped += 1
    return swapped


def replace_4bit_with_linears(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """The reverse: every Linear4bit becomes a frozen nn.Linear holding its dequantized weight."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, Linear4bit):
            parent_name, _, child = name.rpartition(".")
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device="meta")
            dense.weight = nn.Parameter(module.dequantized_weight(dtype), requires_grad=False)
            if module.bias is not None:
                dense.bias = nn.Parameter(module.bias.to(dtype), requires_grad=False)
            setattr(model.get_submodule(parent_name), child, dense)
            swapped += 1
    return swapped
