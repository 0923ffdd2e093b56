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
This file is the format as the project runs it, bit-exact with bitsandbytes and fast: quantize,
dequantize, QuantState and how it is saved. model/quant/nf4_reference.py says the same in a few plain
lines (tests/test_quant.py names where the two differ). The layer that computes with it,
Linear4bit, is in model/quant/linear4bit.py.
"""

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from model.errors import UserError

BLOCKSIZE = 64             # weights per absmax (bitsandbytes' default for 4-bit)
NESTED_BLOCKSIZE = 256     # absmax values per float32 scale in double quantization
QUANT_TYPE = "nf4"
STATE_KEY = "quant_state.bitsandbytes__nf4"   # the JSON entry bitsandbytes saves per weight
# QuantState's tensor fields, and the name bitsandbytes saves each under: "X.weight.<name>".
SAVED_NAMES = {"absmax": "absmax", "code": "quant_map", "nested_absmax": "nested_absmax",
               "nested_code": "nested_quant_map"}
STAT_SUFFIXES = (*SAVED_NAMES.values(), STATE_KEY)
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

# On CPU, quantize_nf4 works through a big matrix in chunks of this many blocks, in one thread:
# each chunk's temporaries stay in cache, and no step waits for a second thread, which makes it
# several times faster than whole-matrix passes (and far faster on a busy machine).
CPU_CHUNK_BLOCKS = 4096

# The nearest NF4 value is looked up in a table over cells of width 1/NF4_CELLS (see _nearest_nf4).
NF4_CELLS = 4096


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
TENSOR_FIELDS = ("absmax", "nested_absmax", "nested_code", "offset", "code")   # QuantState's tensors


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
        return tuple(getattr(self, name) for name in TENSOR_FIELDS)

    def layout(self) -> tuple:
        return self.shape, self.dtype, self.blocksize, self.nested_blocksize

    def to(self, device) -> "QuantState":
        return QuantState(*(t.to(device) for t in self.tensors()), *self.layout())


def _nf4_midpoints(device) -> Tensor:
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    return (code[:-1] + code[1:]) / 2                          # (15,)


def _nearest_nf4(scaled: Tensor) -> Tensor:
    """(n,) uint8: for each float32 value in [-1, 1], the index of the nearest NF4 value, a tie
    going to the lower one. That index is the number of midpoints between neighbouring codes that
    lie strictly below the value (what torch.bucketize computes, but a binary search per value is
    slow on CPU). Here [-1, 1] is cut into cells of width 1/NF4_CELLS; a table gives the number
    of midpoints below each cell, and as no cell holds more than one midpoint (they are >= 0.08
    apart), one comparison with the next midpoint finishes the count."""
    below_cell, midpoints = _nf4_cell_table(scaled.device)
    cell = ((scaled + 1.0) * NF4_CELLS).int().clamp_(0, 2 * NF4_CELLS)   # (n,) which cell
    below = below_cell.index_select(0, cell)                             # (n,) midpoints below it
    return (below + (midpoints.index_select(0, below) < scaled)).to(torch.uint8)


def _nf4_cell_table(device) -> tuple[Tensor, Tensor]:
    """(2 * NF4_CELLS + 1,) int32: midpoints below the lower edge of each cell, and the 15
    midpoints followed by +inf (so that "the next midpoint" always exists). The edges are moved
    down by 2^-20, more than the float32 rounding in computing a value's cell (at most 2^-24),
    so a value never lies below the edge of the cell it lands in."""
    device = torch.device(device)
    if device not in _NF4_CELL_TABLES:
        midpoints = _nf4_midpoints(device)
        edges = torch.arange(2 * NF4_CELLS + 1, dtype=torch.float64, device=device) / NF4_CELLS - 1
        below_cell = torch.searchsorted(midpoints.double(), edges - 2.0**-20).int()
        padded = torch.cat([midpoints, torch.full((1,), math.inf, device=device)])
        _NF4_CELL_TABLES[device] = (below_cell, padded)
    return _NF4_CELL_TABLES[device]


_NF4_CELL_TABLES: dict[torch.device, tuple[Tensor, Tensor]] = {}


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
    flat = w.detach().reshape(-1)                               # (n,) row-major
    n = flat.numel()
    n_full = n - n % blocksize
    codes = torch.empty(n + n % 2, dtype=torch.uint8, device=w.device)  # one NF4 index per value
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=w.device)
    on_cpu = w.device.type == "cpu"
    step = CPU_CHUNK_BLOCKS * blocksize if on_cpu else max(n_full, 1)
    with _single_thread(on_cpu):
        for start in range(0, n_full, step):
            end = min(start + step, n_full)
            blocks = flat[start:end].float().view(-1, blocksize)   # (chunk_blocks, blocksize)
            block_absmax = blocks.abs().amax(dim=1)                 # (chunk_blocks,)
            scaled = (blocks * (1.0 / block_absmax.clamp(min=TINY))[:, None]).clamp(-1, 1)
            codes[start:end] = _nearest_nf4(scaled.view(-1))
            absmax[start // blocksize:end // blocksize] = block_absmax
    if n_full < n:
        # The short last block. bitsandbytes divides here (and floors the stored absmax), where
        # whole blocks multiply by the reciprocal; following it keeps every byte identical.
        tail = flat[n_full:].float()
        absmax[-1] = tail.abs().amax().clamp(min=TINY)
        codes[n_full:n] = _nearest_nf4((tail / absmax[-1]).clamp(-1, 1))
    if not torch.isfinite(absmax).all():                        # a NaN or inf makes its block's absmax so
        raise ValueError("the weight holds NaN or infinite values, which NF4 cannot store")
    if n % 2:
        codes[n] = NF4_ZERO_INDEX                               # pads the last byte
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


@contextmanager
def _single_thread(active: bool):
    """Runs the block inside with torch's CPU ops in one thread (when `active`)."""
    threads = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if active:
            torch.set_num_threads(threads)


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
    tensors = {prefix: packed}
    for field, name in SAVED_NAMES.items():     # clones: safetensors refuses tensors that share memory
        tensors[f"{prefix}.{name}"] = getattr(state, field).clone()
    tensors[f"{prefix}.{STATE_KEY}"] = torch.tensor(list(text), dtype=torch.uint8)
    return tensors


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
    sizes = {"absmax": n_blocks, "nested_absmax": -(-n_blocks // nested_blocksize), "code": 16,
             "nested_code": 256}
    expected = {prefix: (n + 1) // 2, **{f"{prefix}.{SAVED_NAMES[f]}": size for f, size in sizes.items()}}
    for key, size in expected.items():
        if get(key).numel() != size:
            raise UserError(f"{source}: '{key}' holds {get(key).numel()} values but its "
                            f"quant_state shape {list(shape)} implies {size}; the checkpoint is corrupt")
    stat = {field: get(f"{prefix}.{name}") for field, name in SAVED_NAMES.items()}
    state = QuantState(absmax=stat["absmax"].to(torch.uint8), nested_absmax=stat["nested_absmax"].float(),
                       nested_code=stat["nested_code"].float(),
                       offset=torch.tensor(offset, dtype=torch.float32, device=packed.device),
                       code=stat["code"].float(),
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
    bnb_state = bitsandbytes_state(state, dtype or state.dtype)
    return _bitsandbytes().dequantize_4bit(packed, bnb_state).view(state.shape)   # it returns 1-D shapes as 2-D


def bitsandbytes_state(state: QuantState, dtype: torch.dtype):
    """Our QuantState as bitsandbytes' own (the same tensors), for its dequantize and matmul kernels."""
    bnbf = _bitsandbytes()
    nested = bnbf.QuantState(absmax=state.nested_absmax, code=state.nested_code,
                             blocksize=state.nested_blocksize, dtype=torch.float32)
    return bnbf.QuantState(absmax=state.absmax, shape=torch.Size(state.shape), code=state.code,
                           blocksize=state.blocksize, quant_type=QUANT_TYPE, dtype=dtype,
                           offset=state.offset, state2=nested)


def dequantizer(backend: str, device) -> Callable[..., Tensor]:
    """dequantize_nf4 or its bitsandbytes twin, for `backend` ("auto", "torch", "bitsandbytes")."""
    if backend not in ("auto", "torch", "bitsandbytes"):
        raise UserError(f"backend '{backend}' is not one of auto, torch, bitsandbytes")
    usable = torch.device(device).type in ("cpu", "cuda") and _bitsandbytes() is not None
    if backend == "bitsandbytes" and not usable:
        raise UserError(f"backend 'bitsandbytes' needs bitsandbytes installed and a cpu or cuda "
                        f"device (got {device}); pip install bitsandbytes or use backend='torch'")
    return _dequantize_bitsandbytes if backend != "torch" and usable else dequantize_nf4
