"""LoRA: the formula, the counts, merging, and adapters that move between us and HF peft."""

import json
import math

import pytest
import torch
import torch.nn as nn

from lora import (LoRAConfig, LoRALinear, inject, load_adapter, merge, save_adapter, save_merged,
                  unmerge)
from model import UserError, load_model
from tests.helpers import save_hf_checkpoint, tiny_hf_config


@pytest.fixture
def tiny(tmp_path):
    """A random tiny Llama saved in HF layout, and the transformers model it came from."""
    folder = tmp_path / "base"
    hf = save_hf_checkpoint(tiny_hf_config(), folder)
    return folder, hf


def _randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


IDS = torch.randint(0, 320, (2, 20), generator=torch.Generator().manual_seed(3))


def test_lora_linear_computes_base_plus_scaled_low_rank_update():
    base = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    layer = LoRALinear(base, r=1, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 1.0, 1.0]]))   # A x = sum(x)
        layer.lora_B.copy_(torch.tensor([[1.0], [-1.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # W x = [7, 2]; B A x = [6, -6]; scale = alpha / r = 2  ->  [19, -10]
    assert layer(x).tolist() == [[19.0, -10.0]]


def test_lora_starts_as_the_identity_update_with_kaiming_uniform_a():
    base = nn.Linear(64, 32, bias=False)
    layer = LoRALinear(base, r=8, alpha=16)
    x = torch.randn(4, 64)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(64)  # kaiming_uniform with a=sqrt(5): sqrt(6 / (6 * fan_in))
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.8 * bound


def test_rslora_scales_by_alpha_over_sqrt_r():
    layer = LoRALinear(nn.Linear(8, 8), r=16, alpha=8, use_rslora=True)
    assert layer.scale == 8 / 4


def test_inject_wraps_the_seven_targets_freezes_the_rest_and_counts(tiny):
    folder, _ = tiny
    model = load_model(folder)
    counts = inject(model, LoRAConfig(r=4, alpha=8))
    cfg = model.config
    kv = cfg.n_kv_heads * cfg.head_dim
    per_layer = 4 * ((64 + 64) + (64 + kv) * 2 + (64 + 64) + (64 + 160) * 2 + (160 + 64))
    assert counts.trainable == cfg.n_layers * per_layer
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())
    assert "trainable params" in str(counts)


def test_targets_accept_the_short_names():
    assert LoRAConfig(targets="q,v,gate").targets == ("q_proj", "v_proj", "gate_proj")


def test_merge_keeps_the_logits_and_unmerge_restores_the_weights(tiny):
    folder, _ = tiny
    model = load_model(folder)
    w0 = model.layers[0].self_attn.q_proj.weight.clone()
    inject(model, LoRAConfig(r=4, alpha=8))
    _randomize_lora(model)
    with torch.no_grad():
        before = model(IDS)
        merge(model)
        merged = model(IDS)
        unmerge(model)
        after = model(IDS)
    assert (merged - before).abs().max() < 1e-5
    assert (after - before).abs().max() < 1e-5
    assert torch.allclose(model.layers[0].self_attn.q_proj.base.weight, w0, atol=1e-6)


def test_merge_over_a_4bit_base_dequantizes_to_full_precision(tiny):
    folder, _ = tiny
    model = load_model(folder, quantize="nf4")
    inject(model, LoRAConfig(r=4, alpha=8))
    _randomize_lora(model)
    layer = model.layers[0].mlp.up_proj
    with torch.no_grad():
        before = model(IDS)
        merge(model)
        assert isinstance(layer.base, nn.Linear) and layer.base.weight.dtype == torch.float32
        merged = model(IDS)
        unmerge(model)
    assert (merged - before).abs().max() < 1e-4
    assert not isinstance(layer.base, nn.Linear)  # the exact 4-bit module is back


def test_our_adapter_loads_in_peft_and_gives_the_same_logits(tiny, tmp_path):
    from peft import PeftModel
    folder, hf = tiny
    model = load_model(folder)
    inject(model, LoRAConfig(r=4, alpha=8))
    _randomize_lora(model)
    save_adapter(model, tmp_path / "adapter", base_model=str(folder))
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (model(IDS) - peft_model(IDS).logits).abs().max() < 1e-4


def test_a_peft_trained_adapter_loads_into_ours(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model
    folder, hf = tiny
    peft_model = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    _randomize_lora(peft_model, seed=1)
    peft_model.save_pretrained(tmp_path / "peft")
    ours = load_model(folder, adapter=tmp_path / "peft")
    with torch.no_grad():
        assert (ours(IDS) - peft_model(IDS).logits).abs().max() < 1e-4


def test_merged_export_loads_in_transformers_with_the_same_logits(tiny, tmp_path):
    from transformers import LlamaForCausalLM
    folder, _ = tiny
    model = load_model(folder)
    inject(model, LoRAConfig(r=4, alpha=8))
    _randomize_lora(model)
    with torch.no_grad():
        expected = model(IDS)
    save_merged(model, tmp_path / "merged", source_dir=folder, dtype=torch.float32)
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(IDS).logits - expected).abs().max() < 1e-4


def test_missing_adapter_folder_is_named(tiny, tmp_path):
    folder, _ = tiny
    with pytest.raises(UserError, match="no-such-adapter"):
        load_model(folder, adapter=tmp_path / "no-such-adapter")


def test_adapter_with_the_wrong_r_is_refused(tiny, tmp_path):
    folder, _ = tiny
    model = load_model(folder)
    inject(model, LoRAConfig(r=4, alpha=8))
    save_adapter(model, tmp_path / "a")
    cfg = json.loads((tmp_path / "a/adapter_config.json").read_text())
    cfg["r"] = 8
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="r in adapter_config.json"):
        load_model(folder, adapter=tmp_path / "a")


def test_adapter_for_a_different_base_is_refused(tiny, tmp_path):
    folder, _ = tiny
    other = tmp_path / "other"
    save_hf_checkpoint(tiny_hf_config(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2), other)
    model = load_model(other)
    inject(model, LoRAConfig(r=4, alpha=8))
    save_adapter(model, tmp_path / "a")
    with pytest.raises(UserError, match="different base model"):
        load_model(folder, adapter=tmp_path / "a")
