"""NF4: 4-bit NormalFloat weights with double quantization (the "Q" in QLoRA).

The format, byte for byte the one bitsandbytes writes with
`quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)`:

1. Blocks. The weight is flattened row by row and cut into blocks of 64 values (the last block
   may be shorter).
2. Scale. Each block is divided by its absolute maximum ("absmax"), so it lies in [-1, 1].
3. Code. Each scaled value becomes the index (0..15) of the nearest of 16 fixed numbers, the NF4
   code. They are quantiles of a normal distribution, so normally distributed weights use the 16
   levels about equally often; index 0 is -1, index 7 is exactly 0, index 15 is +1.
4. Packing. Two 4-bit indices per byte, the first value in the high nibble.
5. Double quantization. A float32 absmax per 64 weights would cost 0.5 bit per weight, so the
   absmax values are quantized too: their mean (the "offset") is subtracted, they are cut into
   blocks of 256, and each becomes an 8-bit index into bitsandbytes' "dynamic" code, scaled by
   one float32 absmax per block of 256. Cost: 8/64 + 32/(64*256) = 0.127 bit per weight.

    weight (out, in) ──► packed   ((out*in+1)//2, 1) uint8    two NF4 indices per byte
                         absmax   (n_blocks,)          uint8    8-bit code of each block's scale
                         nested_absmax (n_blocks/256,) float32  scale of each 256 absmax codes
                         offset   ()                   float32  mean of the absmax values

Dequantizing runs it backwards: absmax = dynamic[q8] * nested_absmax + offset, w = NF4[q4] * absmax.
Linear4bit keeps only those bytes and rebuilds the float weight on the fly, in forward and again
in backward, so a frozen base model costs ~4.13 bits per weight during QLoRA training.
"""

import json
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from model.errors import UserError

BLOCKSIZE = 64             # weights per absmax (bitsandbytes' default for 4-bit)
NESTED_BLOCKSIZE = 256     # absmax values per float32 scale in double quantization
QUANT_TYPE = "nf4"
STATE_KEY = "quant_state.bitsandbytes__nf4"   # the JSON entry bitsandbytes saves per weight
STAT_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map", STATE_KEY)  # "X.weight.<suffix>"
TINY = 1e-38               # bitsandbytes' floor under an absmax before dividing by it

# The 16 NF4 values, as bitsandbytes and the QLoRA paper list them (float32).
# nf4_code_from_normal_quantiles() below recomputes them from their definition.
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_ZERO_INDEX = 7         # the code of 0.0: what pads an odd number of values to whole bytes

# bitsandbytes' CPU kernel finds the nearest 8-bit code through a grid of 65,536 points on
# [-1, 1] (see _quantize_blockwise_8bit).
GRID_POINTS = 65536

BACKEND = "auto"           # "auto", "torch" or "bitsandbytes"; Linear4bit(backend=...) overrides


# ----------------------------------------------------------------------------- the two codes
def nf4_code_from_normal_quantiles() -> Tensor:
    """NF4 from its definition (QLoRA, appendix E): 8 positive and 7 negative quantiles of
    N(0, 1), plus an exact 0, scaled so the largest is 1. The outermost quantile is taken at
    0.9677 = mean(1 - 1/(2*15), 1 - 1/(2*16)) rather than at 1, where it would be infinite."""
    edge = 0.9677083
    positive = torch.special.ndtri(torch.linspace(edge, 0.5, 9)[:-1].double())    # 8 values
    negative = -torch.special.ndtri(torch.linspace(edge, 0.5, 8)[:-1].double())   # 7 values
    values = torch.cat([positive, negative, torch.zeros(1, dtype=torch.float64)])
    values = values.float().sort().values
    return values / values.max()


def create_dynamic_map() -> Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code (its create_dynamic_map()), 256 sorted values.

    Decade i = 0..6 covers magnitudes 10^(i-6): its 2^i values are the midpoints of
    linspace(0.1, 1, 2^i + 1) times 10^(i-6), each with both signs. 2 * (1+2+...+64) = 254
    values, plus 0 and 1: fine steps near 1, coarse ones near 0, like a tiny float format.
    """
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2
        scale = 10 ** (i - 6)
        values += (scale * means).tolist() + (-scale * means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


# ----------------------------------------------------------------------------- the state
@dataclass
class QuantState:
    """Everything besides the packed bytes that is needed to rebuild a weight."""
    absmax: Tensor            # (n_blocks,) uint8: each block's absmax as an 8-bit dynamic code
    nested_absmax: Tensor     # (ceil(n_blocks / 256),) float32: scale of each 256 absmax codes
    nested_code: Tensor       # (256,) float32: the dynamic map that `absmax` indexes
    offset: Tensor            # () float32: mean absmax, subtracted before coding them
    code: Tensor              # (16,) float32: the NF4 values that the packed nibbles index
    shape: tuple[int, ...]    # the original weight's shape
    dtype: torch.dtype        # the original weight's dtype (what dequantize_nf4 returns)
    blocksize: int = BLOCKSIZE
    nested_blocksize: int = NESTED_BLOCKSIZE

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensor fields, in field order: QuantState(*state.tensors(), *state.layout())."""
        return self.absmax, self.nested_absmax, self.nested_code, self.offset, self.code

    def layout(self) -> tuple:
        return self.shape, self.dtype, self.blocksize, self.nested_blocksize

    def to(self, device) -> "QuantState":
        return QuantState(*(t.to(device) for t in self.tensors()), *self.layout())


def _nf4_midpoints(device) -> Tensor:
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    return (code[:-1] + code[1:]) / 2                          # (15,)


# ----------------------------------------------------------------------------- 8-bit absmax codes
def _quantize_blockwise_8bit(x: Tensor, code: Tensor, blocksize: int) -> tuple[Tensor, Tensor]:
    """Blockwise absmax quantization of float32 `x` to indices into the sorted 256-value `code`.

    The nearest code is found the way bitsandbytes' CPU kernel does it, so the bytes match: the
    scaled value v in [-1, 1] is rounded to the nearest of 65,536 grid points, and a table gives
    the nearest code of each grid point. (Its CUDA kernel searches the code directly; the two
    differ on about 0.1% of indices, always by one neighbouring code.)
    """
    n = x.numel()
    n_blocks = -(-n // blocksize)
    padded = torch.zeros(n_blocks * blocksize, dtype=torch.float32, device=x.device)
    padded[:n] = x.reshape(-1)                                  # zeros change no absmax
    blocks = padded.view(n_blocks, blocksize)                   # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)                           # (n_blocks,)
    inverse = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    v = (blocks * inverse[:, None]).clamp(-1, 1)
    # grid index = trunc((v + 1) / 2 * 65535 + 0.5); the kernel does the last step as one fused
    # multiply-add, which float64 followed by one rounding to float32 reproduces exactly.
    half = (v + 1.0) * 0.5
    grid_index = (half.double() * (GRID_POINTS - 1) + 0.5).float().long()
    indices = _nearest_code_table(code)[grid_index]
    indices[absmax == 0] = 0                                    # an all-zero block stores zeros
    return indices.reshape(-1)[:n], absmax


def _nearest_code_table(code: Tensor) -> Tensor:
    """(65536,) uint8: for grid point g_i = 2i/65535 - 1, the index of the nearest code value
    (the number of midpoints between neighbouring codes that lie strictly below g_i).
    Built once per code and device."""
    key = (code.device, tuple(code.tolist()))
    if key not in _NEAREST_TABLES:
        midpoints = (code[:-1] + code[1:]) * 0.5
        i = torch.arange(GRID_POINTS, dtype=torch.float32, device=code.device)
        grid = (i + i) / (GRID_POINTS - 1) - 1.0
        _NEAREST_TABLES[key] = torch.searchsorted(midpoints, grid).to(torch.uint8)
    return _NEAREST_TABLES[key]


_NEAREST_TABLES: dict[tuple, Tensor] = {}


def _dequantize_blockwise_8bit(indices: Tensor, absmax: Tensor, code: Tensor, blocksize: int) -> Tensor:
    return _scale_blocks(code.index_select(0, indices.int()), absmax, blocksize)


def _scale_blocks(values: Tensor, absmax: Tensor, blocksize: int) -> Tensor:
    """values[j] * absmax[j // blocksize] in float32, for a flat `values`."""
    n_full = values.numel() // blocksize * blocksize
    full = values[:n_full].view(-1, blocksize) * absmax[:n_full // blocksize, None]  # (blocks, blocksize)
    if n_full == values.numel():
        return full.view(-1)
    return torch.cat([full.view(-1), values[n_full:] * absmax[-1]])      # a shorter last block


# ----------------------------------------------------------------------------- NF4
def quantize_nf4(w: Tensor, blocksize: int = BLOCKSIZE) -> tuple[Tensor, QuantState]:
    """(packed uint8 of shape ((n+1)//2, 1), state); identical to bitsandbytes' quantize_4bit
    with quant_type="nf4", compress_statistics=True, for float32, float16 and bfloat16 input."""
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"NF4 quantizes float32, float16 or bfloat16 weights, not {w.dtype}")
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    flat = w.detach().reshape(-1).float()                       # (n,) row-major
    n = flat.numel()
    n_full = n - n % blocksize
    full = flat[:n_full].view(-1, blocksize)                    # (n_full_blocks, blocksize)
    absmax = full.abs().amax(dim=1)
    scaled = (full * (1.0 / absmax.clamp(min=TINY))[:, None]).clamp(-1, 1).reshape(-1)
    if n_full < n:
        # The short last block. bitsandbytes divides here (and floors the stored absmax), where
        # whole blocks multiply by the reciprocal; following it keeps every byte identical.
        tail = flat[n_full:]
        tail_absmax = tail.abs().amax().clamp(min=TINY)
        absmax = torch.cat([absmax, tail_absmax[None]])
        scaled = torch.cat([scaled, (tail / tail_absmax).clamp(-1, 1)])

    # Nearest NF4 value: count the midpoints below each value (a tie goes to the lower value).
    codes = torch.bucketize(scaled, _nf4_midpoints(w.device), out_int32=True).to(torch.uint8)
    if n % 2:
        codes = torch.cat([codes, codes.new_full((1,), NF4_ZERO_INDEX)])
    packed = (codes[0::2] << 4) | codes[1::2]                   # first value in the high nibble

    offset = absmax.mean()
    q_absmax, nested_absmax = _quantize_blockwise_8bit(absmax - offset, _dynamic_map(w.device),
                                                       NESTED_BLOCKSIZE)
    state = QuantState(absmax=q_absmax, nested_absmax=nested_absmax,
                       nested_code=_dynamic_map(w.device), offset=offset,
                       code=torch.tensor(NF4_CODE, dtype=torch.float32, device=w.device),
                       shape=tuple(w.shape), dtype=w.dtype, blocksize=blocksize)
    return packed.view(-1, 1), state


def dequantize_nf4(packed: Tensor, state: QuantState, dtype: torch.dtype | None = None) -> Tensor:
    """The weight back, in `dtype` (default: the original dtype); identical to bitsandbytes'
    dequantize_4bit. Values are computed in float32 and rounded once to `dtype`."""
    n = math.prod(state.shape)
    absmax = _dequantize_blockwise_8bit(state.absmax, state.nested_absmax, state.nested_code,
                                        state.nested_blocksize) + state.offset
    packed = packed.reshape(-1)
    nibbles = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n]  # (n,) high first
    values = _scale_blocks(state.code.index_select(0, nibbles.int()), absmax, state.blocksize)
    return values.to(dtype or state.dtype).view(state.shape)


_DYNAMIC_MAPS: dict[torch.device, Tensor] = {}


def _dynamic_map(device) -> Tensor:
    """create_dynamic_map(), built once per device; callers get their own copy."""
    device = torch.device(device)
    if device not in _DYNAMIC_MAPS:
        _DYNAMIC_MAPS[device] = create_dynamic_map().to(device)
    return _DYNAMIC_MAPS[device].clone()


# ----------------------------------------------------------------------------- checkpoints
def quant_state_to_tensors(prefix: str, packed: Tensor, state: QuantState) -> dict[str, Tensor]:
    """The tensors bitsandbytes and transformers save for weight `prefix` (e.g. "...q_proj.weight"):
    the packed bytes under `prefix` itself, the statistics under `prefix.absmax` etc., and the
    non-tensor fields as a JSON string stored in a uint8 tensor under `prefix.quant_state...`."""
    fields = {"quant_type": QUANT_TYPE, "blocksize": state.blocksize,
              "dtype": str(state.dtype).removeprefix("torch."), "shape": list(state.shape),
              "nested_blocksize": state.nested_blocksize, "nested_dtype": "float32",
              "nested_offset": state.offset.item()}
    text = json.dumps(fields).encode("utf-8")
    return {
        prefix: packed,
        f"{prefix}.absmax": state.absmax,
        f"{prefix}.quant_map": state.code.clone(),        # clones: safetensors refuses
        f"{prefix}.nested_absmax": state.nested_absmax,
        f"{prefix}.nested_quant_map": state.nested_code.clone(),  # tensors that share memory
        f"{prefix}.{STATE_KEY}": torch.tensor(list(text), dtype=torch.uint8),
    }


def quant_state_from_tensors(prefix: str, tensors: dict[str, Tensor],
                             source: str) -> tuple[Tensor, QuantState]:
    """Reads what quant_state_to_tensors wrote (or bitsandbytes saved); `source` names the file
    in error messages. Tensors stay on the device they came on."""
    def get(key: str) -> Tensor:
        if key not in tensors:
            raise UserError(f"{source}: key '{key}' is missing; an NF4 weight with double "
                            "quantization needs it, so re-save the checkpoint or load an unquantized one")
        return tensors[key]

    if f"{prefix}.quant_state.bitsandbytes__fp4" in tensors:
        raise UserError(f"{source}: '{prefix}' is quantized as fp4; only nf4 checkpoints are supported")
    try:
        fields = json.loads(bytes(get(f"{prefix}.{STATE_KEY}").cpu().tolist()).decode("utf-8"))
        shape = tuple(int(s) for s in fields["shape"])
        dtype = {"float32": torch.float32, "float16": torch.float16,
                 "bfloat16": torch.bfloat16}[fields["dtype"]]
        blocksize, nested_blocksize = int(fields["blocksize"]), int(fields["nested_blocksize"])
        offset = float(fields["nested_offset"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{source}: '{prefix}.{STATE_KEY}' is not a valid bitsandbytes nf4 "
                        f"quant_state ({type(e).__name__}: {e}); the checkpoint may be corrupt") from None
    if fields.get("quant_type", QUANT_TYPE) != QUANT_TYPE:
        raise UserError(f"{source}: '{prefix}' has quant_type '{fields['quant_type']}'; "
                        "only nf4 is supported")

    packed = get(prefix)
    if packed.dtype != torch.uint8:          # bitsandbytes' quant_storage may be another dtype
        packed = packed.contiguous().view(torch.uint8)
    n = math.prod(shape)
    n_blocks = -(-n // blocksize)
    expected = {prefix: (n + 1) // 2, f"{prefix}.absmax": n_blocks,
                f"{prefix}.nested_absmax": -(-n_blocks // nested_blocksize),
                f"{prefix}.quant_map": 16, f"{prefix}.nested_quant_map": 256}
    for key, size in expected.items():
        if get(key).numel() != size:
            raise UserError(f"{source}: '{key}' holds {get(key).numel()} values but its "
                            f"quant_state shape {list(shape)} implies {size}; the checkpoint is corrupt")
    state = QuantState(absmax=get(f"{prefix}.absmax").to(torch.uint8),
                       nested_absmax=get(f"{prefix}.nested_absmax").float(),
                       nested_code=get(f"{prefix}.nested_quant_map").float(),
                       offset=torch.tensor(offset, dtype=torch.float32, device=packed.device),
                       code=get(f"{prefix}.quant_map").float(),
                       shape=shape, dtype=dtype, blocksize=blocksize, nested_blocksize=nested_blocksize)
    return packed.reshape(-1, 1), state


# ----------------------------------------------------------------------------- bitsandbytes kernels
_BNB = None       # bitsandbytes.functional once imported; False if it cannot be


def _bitsandbytes():
    global _BNB
    if _BNB is None:
        try:
            import bitsandbytes.functional as bnbf
            _BNB = bnbf
        except Exception:     # not installed, or installed without a usable native library
            _BNB = False
    return _BNB or None


def _dequantize_bitsandbytes(packed: Tensor, state: QuantState, dtype: torch.dtype | None = None) -> Tensor:
    """dequantize_nf4 through bitsandbytes' own kernel (same numbers, several times faster)."""
    if packed.device.type == "cpu" and state.shape[-1] % state.blocksize:
        # bitsandbytes' CPU kernel (0.50) is right only when each row holds whole blocks: for an
        # odd last dimension it runs a torch.compile'd fallback (tens of seconds on first use),
        # and for one that is a multiple of 16 but not of 64 it scales by the wrong blocks.
        # Every Llama linear has whole blocks per row; anything else takes our path.
        return dequantize_nf4(packed, state, dtype)
    bnbf = _bitsandbytes()
    nested = bnbf.QuantState(absmax=state.nested_absmax, code=state.nested_code,
                             blocksize=state.nested_blocksize, dtype=torch.float32)
    bnb_state = bnbf.QuantState(absmax=state.absmax, shape=torch.Size(state.shape), code=state.code,
                                blocksize=state.blocksize, quant_type=QUANT_TYPE,
                                dtype=dtype or state.dtype, offset=state.offset, state2=nested)
    return bnbf.dequantize_4bit(packed, bnb_state).view(state.shape)   # it returns 1-D shapes as 2-D


def dequantizer(backend: str, device) -> Callable[..., Tensor]:
    """dequantize_nf4 or its bitsandbytes twin, for `backend` ("auto", "torch", "bitsandbytes")."""
    if backend not in ("auto", "torch", "bitsandbytes"):
        raise UserError(f"backend '{backend}' is not one of auto, torch, bitsandbytes")
    usable = torch.device(device).type in ("cpu", "cuda") and _bitsandbytes() is not None
    if backend == "bitsandbytes" and not usable:
        raise UserError(f"backend 'bitsandbytes' needs bitsandbytes installed and a cpu or cuda "
                        f"device (got {device}); pip install bitsandbytes or use backend='torch'")
    return _dequantize_bitsandbytes if backend != "torch" and usable else dequantize_nf4


# ----------------------------------------------------------------------------- the layer
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

    _STATS = ("absmax", "nested_absmax", "nested_code", "offset", "code")  # QuantState's tensors

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 compute_dtype: torch.dtype = torch.bfloat16, blocksize: int = BLOCKSIZE,
                 device=None, backend: str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self.compute_dtype, self.blocksize = compute_dtype, blocksize
        self.weight_dtype, self.nested_blocksize = compute_dtype, NESTED_BLOCKSIZE
        self.backend = backend          # None: follow the module-level BACKEND
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
        dequantize = dequantizer(self.backend or BACKEND, self.weight.device)
        return dequantize(self.weight, self.quant_state, dtype or self.weight_dtype)

    def forward(self, x: Tensor) -> Tensor:
        dequantize = dequantizer(self.backend or BACKEND, x.device)
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
                              skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Swaps every nn.Linear (except those named in `skip`) for an empty Linear4bit of the same
    shape on the same device (typically "meta", before loading). Returns how many it swapped."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in skip:
            parent_name, _, child = name.rpartition(".")
            layer = Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                               compute_dtype=compute_dtype, device=module.weight.device)
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
