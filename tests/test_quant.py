"""NF4 (model/quant/nf4.py) against bitsandbytes, the reference: the same bytes, the same numbers,
checkpoints in its layout, and a Linear4bit (model/quant/linear4bit.py) whose backward keeps only the
4-bit weight."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.quant import linear4bit
from model.quant import nf4 as quant
from model.errors import UserError
from model.quant.linear4bit import Linear4bit
from model.quant.nf4 import (create_dynamic_map, dequantize_nf4, nf4_code_from_normal_quantiles,
                         quant_state_from_tensors, quant_state_to_tensors, quantize_nf4)

SIZES = [(1,), (63,), (65,), (64 * 256 + 1,), (300, 77), (96, 128)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def bnbf():
    """bitsandbytes.functional, with torch.compile off: bitsandbytes compiles its CPU fallback
    for odd shapes on first use, which takes tens of seconds and changes no number."""
    functional = pytest.importorskip("bitsandbytes.functional")
    import torch._dynamo
    with torch._dynamo.config.patch(disable=True):
        yield functional


def random_weight(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    flat = w.view(-1)
    flat[64:128] = 0               # an all-zero block (where there is one)
    flat[-1] = 0.5                 # an outlier
    return w.to(dtype)


def reference(bnbf, w):
    return bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)


# ----------------------------------------------------------------------------- the format
def test_dynamic_map_equals_bitsandbytes(bnbf):
    assert torch.equal(create_dynamic_map(), bnbf.create_dynamic_map())


def test_nf4_code_equals_bitsandbytes_and_its_normal_quantile_definition(bnbf):
    table = torch.tensor(quant.NF4_CODE, dtype=torch.float32)
    assert torch.equal(table, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(nf4_code_from_normal_quantiles(), table)


def test_first_value_goes_in_the_high_nibble_and_odd_lengths_pad_with_zero_code():
    # -1 -> code 0, +1 -> code 15, 0 -> code 7 (hand-computed from the NF4 table)
    packed, _ = quantize_nf4(torch.tensor([1.0, 0.0, -1.0]))
    assert packed.flatten().tolist() == [0xF7, 0x07]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_quantize_is_bit_exact_with_bitsandbytes(bnbf, shape, dtype):
    w = random_weight(shape, dtype)
    packed, state = quantize_nf4(w)
    ref_packed, ref = reference(bnbf, w)
    assert torch.equal(packed, ref_packed)
    assert torch.equal(state.absmax, ref.absmax)
    assert torch.equal(state.nested_absmax, ref.state2.absmax)
    assert torch.equal(state.offset, ref.offset)
    assert torch.equal(state.nested_code, ref.state2.code)
    assert torch.equal(state.code, ref.code)
    assert (state.shape, state.dtype, state.blocksize, state.nested_blocksize) == \
        (tuple(ref.shape), ref.dtype, ref.blocksize, ref.state2.blocksize)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_dequantize_is_bit_exact_with_bitsandbytes(bnbf, shape, dtype):
    w = random_weight(shape, dtype, seed=1)
    ours = dequantize_nf4(*quantize_nf4(w))
    theirs = bnbf.dequantize_4bit(*reference(bnbf, w))
    assert ours.shape == w.shape and ours.dtype == dtype
    assert torch.equal(ours.flatten(), theirs.flatten())   # bitsandbytes returns 1-D input as 2-D


@pytest.mark.parametrize("shape", [(64, 128), (40, 96), (40, 77)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitsandbytes_kernel_path_dequantizes_to_the_same_bits(bnbf, shape, dtype):
    packed, state = quantize_nf4(random_weight(shape, torch.bfloat16, seed=2))
    expected = dequantize_nf4(packed, state, dtype)
    assert torch.equal(quant._dequantize_bitsandbytes(packed, state, dtype), expected)


def real_weights_file() -> Path:
    root = os.environ.get("LLAMACARE_CACHE") or Path.home() / ".cache" / "llamacare"
    return Path(root).expanduser() / "SmolLM2-135M-Instruct-from-gguf" / "model.safetensors"


@pytest.mark.skipif(not real_weights_file().is_file(), reason="converted SmolLM2 weights not cached")
@pytest.mark.parametrize("name", ["model.layers.0.self_attn.k_proj.weight",
                                  "model.layers.7.mlp.down_proj.weight"])
def test_real_smollm2_weights_quantize_bit_exact(bnbf, name):
    from safetensors import safe_open
    with safe_open(str(real_weights_file()), framework="pt") as f:
        w = f.get_tensor(name).to(torch.bfloat16)
    packed, state = quantize_nf4(w)
    ref_packed, ref = reference(bnbf, w)
    assert torch.equal(packed, ref_packed) and torch.equal(state.absmax, ref.absmax)
    assert torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(ref_packed, ref))


# ----------------------------------------------------------------------------- checkpoints
def test_serialized_tensors_equal_what_bitsandbytes_saves(bnbf):
    w = random_weight((48, 64), torch.bfloat16)
    ours = quant_state_to_tensors("layer.weight", *quantize_nf4(w))
    packed, ref = reference(bnbf, w)
    theirs = {"layer.weight": packed, **{f"layer.weight.{k}": v for k, v in ref.as_dict(packed=True).items()}}
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_serialization_round_trips_through_a_safetensors_file(tmp_path):
    from safetensors.torch import load_file, save_file
    weights = {name: random_weight((32, 96), torch.float16, seed=i) for i, name in enumerate("ab")}
    tensors = {}
    for name, w in weights.items():                  # two weights: their code tables must not share memory
        tensors.update(quant_state_to_tensors(f"{name}.weight", *quantize_nf4(w)))
    save_file(tensors, tmp_path / "model.safetensors")
    loaded = load_file(tmp_path / "model.safetensors")
    for name, w in weights.items():
        packed, state = quant_state_from_tensors(f"{name}.weight", loaded, source="model.safetensors")
        assert state.shape == (32, 96) and state.dtype == torch.float16
        assert torch.equal(dequantize_nf4(packed, state), dequantize_nf4(*quantize_nf4(w)))


def test_missing_quant_state_key_is_a_user_error_naming_key_and_file():
    tensors = quant_state_to_tensors("q.weight", *quantize_nf4(random_weight((8, 64), torch.float32)))
    del tensors["q.weight.quant_state.bitsandbytes__nf4"]
    with pytest.raises(UserError, match=r"shard-3\.safetensors.*'q\.weight\.quant_state\.bitsandbytes__nf4'"):
        quant_state_from_tensors("q.weight", tensors, source="shard-3.safetensors")


def test_packed_size_that_disagrees_with_the_shape_is_a_user_error_naming_key_and_file():
    tensors = quant_state_to_tensors("q.weight", *quantize_nf4(random_weight((8, 64), torch.float32)))
    tensors["q.weight"] = tensors["q.weight"][:-1]
    with pytest.raises(UserError, match=r"model\.safetensors.*'q\.weight' holds 255 values.*\[8, 64\]"):
        quant_state_from_tensors("q.weight", tensors, source="model.safetensors")


def test_json_state_records_shape_dtype_and_offset():
    packed, state = quantize_nf4(random_weight((8, 64), torch.bfloat16))
    tensors = quant_state_to_tensors("w", packed, state)
    fields = json.loads(bytes(tensors["w.quant_state.bitsandbytes__nf4"].tolist()))
    assert fields["shape"] == [8, 64] and fields["dtype"] == "bfloat16"
    assert fields["nested_offset"] == state.offset.item()


# ----------------------------------------------------------------------------- Linear4bit
def dense_and_4bit(bias=True, backend="torch", compute_dtype=torch.float32, shape=(48, 96)):
    torch.manual_seed(0)
    dense = nn.Linear(shape[1], shape[0], bias=bias)
    return dense, Linear4bit.from_linear(dense, compute_dtype, backend=backend)


def test_linear4bit_has_no_parameters_and_nothing_that_requires_grad():
    _, layer = dense_and_4bit(bias=True)
    assert list(layer.parameters()) == []
    assert not any(b.requires_grad for b in layer.buffers())


def test_forward_equals_dense_forward_on_the_dequantized_weight():
    dense, layer = dense_and_4bit(bias=True)
    x = torch.randn(3, 5, 96)
    expected = F.linear(x, layer.dequantized_weight(torch.float32), dense.bias)
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_and_bitsandbytes_paths_give_the_same_output_and_grad_input(bnbf, compute_dtype):
    results = []
    for backend in ("torch", "bitsandbytes"):
        _, layer = dense_and_4bit(backend=backend, compute_dtype=compute_dtype)
        x = torch.randn(4, 96, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = layer(x)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_grad_input_equals_dense_autograd_on_the_dequantized_weight():
    _, layer = dense_and_4bit(bias=False)
    x = torch.randn(6, 96, requires_grad=True)
    layer(x).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, layer.dequantized_weight()).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_backward_keeps_the_packed_weight_and_no_float_weight():
    _, layer = dense_and_4bit(bias=True)
    saved = []
    x = torch.randn(2, 96, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    y.sum().backward()
    assert any(t is layer.weight for t in saved)                        # the hook does see saves
    assert not any(t.is_floating_point() and t.numel() >= 48 * 96 for t in saved)


def test_float_casts_keep_the_statistics_in_float32():
    _, layer = dense_and_4bit()
    before = layer.dequantized_weight()
    layer.to(torch.float16)
    assert layer.nested_absmax.dtype == torch.float32 and layer.code.dtype == torch.float32
    assert torch.equal(layer.dequantized_weight(), before)


def test_to_device_moves_every_buffer_of_the_state():
    _, layer = dense_and_4bit()
    layer.to("meta")
    assert {b.device.type for b in layer.buffers()} == {"meta"}
    assert layer.quant_state.nested_absmax.is_meta and layer.quant_state.offset.is_meta


def test_empty_layer_built_on_meta_then_quantized_equals_from_weight():
    dense, layer = dense_and_4bit(bias=False)
    empty = Linear4bit(96, 48, compute_dtype=torch.float32, device="meta")
    assert empty.weight.is_meta and empty.weight_shape == (48, 96)
    empty.quantize_(dense.weight)
    assert torch.equal(empty.weight, layer.weight)
    assert torch.equal(empty.dequantized_weight(), layer.dequantized_weight())


def test_state_dict_is_bitsandbytes_layout_and_loads_into_a_meta_layer():
    _, layer = dense_and_4bit(bias=True)
    state = layer.state_dict()
    assert set(state) == {"weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
                          "weight.nested_quant_map", "weight.quant_state.bitsandbytes__nf4", "bias"}
    fresh = Linear4bit(96, 48, bias=True, compute_dtype=torch.float32, device="meta")
    fresh.load_state_dict(state)
    x = torch.randn(3, 96)
    assert torch.equal(fresh(x), layer(x))


def test_from_quantized_builds_the_same_layer():
    dense, layer = dense_and_4bit(bias=False)
    rebuilt = Linear4bit.from_quantized(*quantize_nf4(dense.weight), compute_dtype=torch.float32)
    x = torch.randn(3, 96)
    assert torch.equal(rebuilt(x), layer(x))


def test_replace_linears_skips_lm_head_and_the_reverse_restores_dense_layers():
    model = nn.ModuleDict({"q_proj": nn.Linear(64, 64, bias=False), "lm_head": nn.Linear(64, 10, bias=False)})
    assert linear4bit.replace_linears_with_4bit(model, torch.float32) == 1
    assert isinstance(model["q_proj"], Linear4bit) and isinstance(model["lm_head"], nn.Linear)
    model["q_proj"].quantize_(torch.randn(64, 64))
    expected = model["q_proj"].dequantized_weight(torch.float32)
    assert linear4bit.replace_4bit_with_linears(model, torch.float32) == 1
    assert type(model["q_proj"]) is nn.Linear and torch.equal(model["q_proj"].weight, expected)


def test_unknown_backend_is_a_user_error():
    with pytest.raises(UserError, match="backend 'cuda-magic'"):
        quant.dequantizer("cuda-magic", "cpu")


def test_the_backend_is_chosen_per_layer_and_checked_when_the_layer_is_built():
    from model.quant import linear4bit
    assert not hasattr(linear4bit, "BACKEND")          # no module-wide switch to flip behind a test's back
    assert Linear4bit(96, 48, compute_dtype=torch.float32, device="meta").backend == "auto"
    with pytest.raises(UserError, match="backend 'fast'"):
        Linear4bit(96, 48, device="meta", backend="fast")
    dense, torch_layer = dense_and_4bit(backend="torch")
    _, auto_layer = dense_and_4bit(backend="auto")
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch_layer(x), auto_layer(x))   # bit-exact twins wherever both run


@pytest.mark.parametrize("shape", [(96, 200), (33, 65), (512, 1024)])
def test_the_readable_reference_agrees_with_the_bitsandbytes_exact_path(shape):
    """model/quant/nf4_reference.py (plain nearest-value search) against model/quant/nf4.py (bitsandbytes'
    bytes). They agree everywhere except in the two places named below."""
    from model.quant import nf4_reference as ref
    from model.quant.nf4 import GRID_POINTS
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    packed, state = quantize_nf4(w)
    q4, q8, nested, offset = ref.quantize(w)
    n = w.numel()
    nibbles = torch.stack([packed.view(-1) >> 4, packed.view(-1) & 0x0F], dim=1).reshape(-1)[:n].long()

    # 1. The 4-bit codes. Whole blocks multiply by 1/absmax where the reference divides; the two
    #    can round apart only for a value that lies on a midpoint between two NF4 values.
    blocks = ref.blockwise(w.flatten(), 64)
    scaled = (blocks / blocks.abs().amax(dim=1, keepdim=True)).flatten()[:n]
    midpoints = (ref.NF4[:-1] + ref.NF4[1:]) / 2
    apart = q4 != nibbles
    assert apart.float().mean() <= 1e-3
    assert all((midpoints - v).abs().min() < 1e-6 for v in scaled[apart])

    # 2. The 8-bit absmax codes. bitsandbytes' CPU kernel first rounds each scaled value to one of
    #    65,536 grid points on [-1, 1] and takes the code nearest that point, so a value within
    #    half a grid step of a midpoint between two dynamic codes can get the neighbouring code.
    assert torch.equal(nested, state.nested_absmax) and torch.equal(offset, state.offset)
    centred = ref.blockwise(blocks.abs().amax(dim=1) - offset, 256)
    v8 = (centred / centred.abs().amax(dim=1, keepdim=True)).flatten()[:q8.numel()]
    dyn_mid = (ref.DYNAMIC[:-1] + ref.DYNAMIC[1:]) / 2
    apart8 = q8 != state.absmax.long()
    assert apart8.float().mean() <= 5e-3        # (512, 1024): 8 of 8,192
    assert ((q8 - state.absmax.long()).abs() <= 1).all()
    assert all((dyn_mid - v).abs().min() <= 1 / (GRID_POINTS - 1) for v in v8[apart8])

    # 3. Dequantizing: from the same codes, the reference gives the same float32 numbers.
    same = ref.dequantize(nibbles, state.absmax.long(), state.nested_absmax, state.offset, shape)
    assert torch.equal(same, dequantize_nf4(packed, state, torch.float32))
