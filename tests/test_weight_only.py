"""--quantize int4 / int8 (model/quant/weight_only.py): weight-only integer linears for decoding,
against the float weights they stand for, and the embedded GGUF's Q4_1 blocks loaded with their
codes unchanged. The kernels multiply in bfloat16 (scales, zeros and activations), so the
references here round the same numbers to bfloat16."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from model import UserError, load_model
from model.checkpoint.gguf import packaged_gguf_path, q4_1_linears
from model.quant.weight_only import Int4Linear, Int8Linear, q4_1_blocks, quantize_int4, quantize_int8

PROMPT = torch.tensor([[1, 504, 3458, 314, 253, 1345, 30, 2, 198, 3, 4, 17, 99, 1000]])


def test_int4_codes_scales_and_zeros_by_hand():
    # one row, one group of 32: min -1, max 2 -> scale 3/15 = 0.2, zero = min + 8 * scale = 0.6
    w = torch.linspace(-1, 2, 32)[None]
    q, scale, zero = quantize_int4(w, 32)
    assert torch.allclose(scale, torch.tensor([[0.2]])) and torch.allclose(zero, torch.tensor([[0.6]]))
    assert q[0, 0] == 0 and q[0, -1] == 15
    back = (q - 8) * scale + zero
    assert (back - w).abs().max() <= 0.1 + 1e-6                   # half a step at most


def test_int8_codes_and_scales_by_hand():
    w = torch.tensor([[0.5, -1.27, 0.0], [2.54, 0.0, -0.02]])
    q, scale = quantize_int8(w)
    assert torch.allclose(scale, torch.tensor([0.01, 0.02]))
    assert q.tolist() == [[50, -127, 0], [127, 0, -1]]


def int4_weight(q, scale, zero, group):
    """(q - 8) * scale + zero with the scale and zero rounded to bfloat16, as the kernel holds them."""
    rep = lambda t: t.bfloat16().float().repeat_interleave(group, 1)  # noqa: E731
    return (q - 8) * rep(scale) + rep(zero)


def within_bf16(got, expected) -> bool:
    """Equal up to one rounding of the value to bfloat16 (8 significant bits)."""
    return bool(((got - expected).abs() <= expected.abs() * 2**-8 + 1e-30).all())


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_linear_equals_a_float_linear_with_its_dequantized_weight(group):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True)
    layer = Int4Linear.from_linear(linear, group)
    q, scale, zero = quantize_int4(linear.weight.detach(), group)
    by_hand = int4_weight(q, scale, zero, group)
    assert within_bf16(layer.dequantize(), by_hand)
    x = torch.randn(2, 5, 256)
    expected = x.bfloat16().float() @ by_hand.t() + linear.bias.detach()
    assert (layer(x) - expected).abs().max() < 1e-2 * expected.abs().max()
    # and it is close to the original layer: int4 error, not a wrong layout
    assert (layer(x) - linear(x)).abs().max() < 0.15 * linear(x).abs().max()


def test_int8_linear_equals_a_float_linear_with_its_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64, bias=False)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(7, 128)
    expected = x.bfloat16().float() @ layer.dequantize().t()
    assert (layer(x) - expected).abs().max() < 1e-2 * expected.abs().max()
    q, scale = quantize_int8(linear.weight.detach())
    assert torch.equal(layer.weight, q)
    assert torch.equal(layer.dequantize(), q.float() * scale.bfloat16().float()[:, None])


def test_q4_1_block_layout_by_hand():
    # one block: d = 0.5, m = -2, codes 0..15 then 15..0 (byte j: low nibble = element j,
    # high nibble = element j + 16)
    codes = list(range(16)) + list(range(15, -1, -1))
    block = np.zeros(20, np.uint8)
    block[0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    block[2:4] = np.frombuffer(np.float16(-2.0).tobytes(), np.uint8)
    block[4:] = [codes[j] | (codes[j + 16] << 4) for j in range(16)]
    q, d, m = q4_1_blocks(torch.from_numpy(np.tile(block, 16)), (16, 32))   # 16 rows: one kernel tile
    assert q[0].tolist() == codes and d[0].item() == 0.5 and m[0].item() == -2.0
    layer = Int4Linear.from_q4_1(q, d, m)
    assert layer.dequantize()[0].tolist() == [0.5 * c - 2 for c in codes]   # exact in bfloat16


@pytest.fixture(scope="module")
def float_and_int4(smollm2_dir):
    return load_model(None, quiet=True), load_model(None, quantize="int4", quiet=True)


@pytest.mark.slow
def test_the_gguf_q4_1_blocks_load_into_int4_with_their_codes(float_and_int4):
    """Every Q4_1 linear of the embedded model, as an Int4Linear, multiplies by the file's own
    codes: its weight is d * q + m with only d and m + 8 d rounded to bfloat16, and so within that
    rounding of the float conversion of the same file."""
    dense, int4 = float_and_int4
    blocks = q4_1_linears(packaged_gguf_path())
    assert len(blocks) == 7 * dense.config.n_layers
    # int4 runs with q/k/v and gate/up stacked into one matrix each (Llama.fuse_projections)
    stacked = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"),
               "mlp.gate_up_proj": ("gate_proj", "up_proj"), "self_attn.o_proj": ("o_proj",),
               "mlp.down_proj": ("down_proj",)}
    for i in range(dense.config.n_layers):
        for fused, parts in stacked.items():
            room = fused.split(".")[0]
            names = [f"layers.{i}.{room}.{p}" for p in parts]
            check_q4_1_layer(int4.get_submodule(f"layers.{i}.{fused}"),
                             [blocks[n] for n in names], [dense.get_submodule(n).weight for n in names])


def check_q4_1_layer(layer, blocks, dense_weights):
    q, d, m = (torch.cat(t) for t in zip(*blocks))
    weight = torch.cat(dense_weights)
    assert isinstance(layer, Int4Linear) and layer.group == 32
    got = layer.dequantize()
    assert within_bf16(got, int4_weight(q, d, m + 8 * d, 32))
    # against the float32 conversion: off by at most the bf16 rounding of d (times |q - 8| <= 8),
    # of m + 8 d, and of the value itself
    slack = ((d.abs() * 8 + (m + 8 * d).abs()).repeat_interleave(32, 1) + weight.abs()) * 2**-8
    assert ((got - weight).abs() <= slack).all()


@pytest.mark.slow
def test_int4_logits_equal_the_dequantized_float_model(float_and_int4):
    """With lm_head (the tied Q8_0 embedding, rounded to int8 per row) given to the float model
    as the int4 model sees it, the logits agree up to the bfloat16 activations of the kernels."""
    dense, int4 = float_and_int4
    assert isinstance(int4.lm_head, Int8Linear) and dense.lm_head is None
    head = nn.Linear(dense.config.dim, dense.config.vocab_size, bias=False)
    head.weight = nn.Parameter(int4.lm_head.dequantize(), requires_grad=False)
    dense.lm_head = head
    try:
        expected = dense(PROMPT)
    finally:
        dense.lm_head = None
    got = int4(PROMPT)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


@pytest.mark.slow
def test_int8_model_logits_against_its_dequantized_weights(smollm2_dir):
    int8 = load_model(None, quantize="int8", quiet=True)
    dense = load_model(None, quiet=True)
    dense.fuse_projections()                  # the layout int8 runs in
    for name, module in list(int8.named_modules()):
        if isinstance(module, Int8Linear):
            if name == "lm_head":
                dense.lm_head = nn.Linear(dense.config.dim, dense.config.vocab_size, bias=False)
            dense.get_submodule(name).weight = nn.Parameter(module.dequantize(), requires_grad=False)
    expected, got = dense(PROMPT), int8(PROMPT)
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smollm2_dir):
    """A LoRA adapter (r 4, B not zero) for the embedded model, saved in PEFT format."""
    from lora import inject, save_adapter
    from lora.inject import LoRAConfig
    from model.checkpoint.identity import base_identity
    model = load_model(None, quiet=True)
    inject(model, LoRAConfig(r=4, alpha=8))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.2)     # an adapter that moves the logits a lot
    out = tmp_path_factory.mktemp("adapter")
    save_adapter(model, out, base_model=str(smollm2_dir), identity=base_identity(smollm2_dir))
    return out


@pytest.mark.slow
def test_an_adapter_is_merged_before_the_weights_become_integers(adapter_dir):
    adapted = load_model(None, adapter=adapter_dir, quiet=True)(PROMPT)
    base = load_model(None, quiet=True)(PROMPT)
    int8 = load_model(None, adapter=adapter_dir, quantize="int8", quiet=True)
    assert not any("lora" in name for name, _ in int8.named_modules())
    got = int8(PROMPT)
    # int8 rounding moves the logits far less than the adapter does
    assert (got - adapted).abs().mean() < 0.25 * (adapted - base).abs().mean()


def test_train_refuses_integer_weights():
    from model.checkpoint.load import TRAIN_QUANTIZE, parse_quantize
    with pytest.raises(UserError, match="--quantize int8: choose none or nf4"):
        parse_quantize("int8", allowed=TRAIN_QUANTIZE)


def test_a_weight_that_does_not_split_into_groups_is_a_one_line_error():
    with pytest.raises(UserError, match="100 x 48 weight does not split into groups of 32 .* use --quantize int8"):
        Int4Linear.from_linear(nn.Linear(48, 100), 32)


@pytest.mark.slow
def test_generate_answers_with_int4_weights(smollm2_dir, capsys):
    import generate
    generate.main(["--prompt", "I can't sleep before exams.", "--max-new-tokens", "6",
                   "--quantize", "int4"])
    out, err = capsys.readouterr()
    assert out.strip() and "tokens in" in err


@torch.inference_mode()
def test_fused_projections_give_the_same_logits(smollm2_dir):
    """Llama.fuse_projections (q/k/v and gate/up stacked, for inference) changes nothing but the
    number of products."""
    model = load_model(None, quiet=True)
    expected = model(PROMPT)
    model.fuse_projections()
    assert not hasattr(model.layers[0].self_attn, "q_proj")
    assert torch.allclose(model(PROMPT), expected, atol=1e-4, rtol=1e-4)
