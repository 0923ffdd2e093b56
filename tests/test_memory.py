"""The memory planner (tools/memory.py): exact parameter counts, the CLI, config sources, and an
activation estimate that matches what autograd really keeps."""

import json

import pytest
import torch

from tools import memory
from model.config import LlamaConfig
from model.errors import UserError
from tools.memory import MemoryPlanArgs, estimate, load_config, main

SMOLLM2_135M = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
                "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5,
                "rope_theta": 100000, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def llama3_8b() -> LlamaConfig:
    return load_config("meta-llama/Meta-Llama-3-8B")[0]


@pytest.mark.parametrize("r, expected", [(16, 41_943_040), (32, 83_886_080)])
def test_llama3_8b_lora_on_the_seven_targets_counts_exactly(r, expected):
    assert estimate(llama3_8b(), MemoryPlanArgs(lora_r=r)).lora_params == expected


@pytest.mark.parametrize("model, expected", [
    ("meta-llama/Meta-Llama-3-8B", 8_030_261_248),     # published parameter counts
    ("meta-llama/Llama-3.2-1B", 1_235_814_400),
    ("meta-llama/Llama-3.2-3B-Instruct", 3_212_749_824),
])
def test_builtin_configs_give_the_published_parameter_counts(model, expected):
    assert estimate(load_config(model)[0], MemoryPlanArgs()).total_params == expected


def test_builtin_configs_carry_rope_scaling_and_tied_embeddings():
    llama3, llama31, llama32 = (load_config(m)[0] for m in
                                ("unsloth/llama-3-8b-bnb-4bit", "meta-llama/Llama-3.1-8B-Instruct",
                                 "meta-llama/Llama-3.2-1B"))
    assert llama3.rope_scaling is None and llama3.rope_theta == 500000.0 and not llama3.tie_word_embeddings
    assert llama31.rope_scaling.factor == 8.0 and llama31.max_seq_len == 131072
    assert llama32.rope_scaling.factor == 32.0 and llama32.tie_word_embeddings and llama32.head_dim == 64


def test_nf4_bytes_equal_what_quantize_nf4_stores():
    from model.quant.nf4 import quantize_nf4
    packed, state = quantize_nf4(torch.randn(300, 77))
    stored = packed.numel() + sum(t.numel() * t.element_size() for t in state.tensors())
    assert memory.nf4_bytes(300 * 77) == stored


def test_cli_prints_counts_with_thousands_separators_and_a_verdict(capsys):
    assert main(["--model", "meta-llama/Meta-Llama-3-8B", "--quantize", "nf4", "--lora-r", "16",
                 "--seq-len", "2048", "--batch-size", "2", "--grad-checkpointing"]) == 0
    out = capsys.readouterr().out
    assert "41,943,040" in out and "8,030,261,248" in out
    assert "Verdict: fits a 16 GB T4" in out


def test_eight_billion_at_batch_2x2048_fits_a_t4_only_with_gradient_checkpointing():
    plain = estimate(llama3_8b(), MemoryPlanArgs(seq_len=2048, batch_size=2))
    checkpointed = estimate(llama3_8b(), MemoryPlanArgs(seq_len=2048, batch_size=2, grad_checkpointing=True))
    assert not plain.fits and plain.dominant(1) == ["activations"]
    assert checkpointed.fits


def test_cli_reads_a_folder_with_config_json(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_135M))
    main(["--model", str(tmp_path), "--lora-targets", "q_proj,v_proj", "--lora-r", "8"])
    out = capsys.readouterr().out
    assert "134,515,008" in out                                 # SmolLM2-135M's published count
    assert f"{30 * 8 * ((576 + 576) + (576 + 192)):,}" in out    # r * (in + out) for q and v


def test_unknown_id_offline_is_a_user_error(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="--model nobody/no-such-model: .*config.json"):
        main(["--model", "nobody/no-such-model"])


def test_unknown_lora_target_is_a_user_error_naming_the_flag():
    with pytest.raises(UserError, match="--lora-targets q,kv: 'kv'"):
        main(["--model", "meta-llama/Llama-3.2-1B", "--lora-targets", "q,kv"])


def test_help_explains_every_flag():
    for action in memory.build_parser()._actions:
        assert action.help and len(action.help) > 15, action.option_strings


@pytest.mark.parametrize("targets", ["q,k,v,o,gate,up,down", "q,v"])
def test_activation_estimate_matches_what_autograd_keeps(targets):
    """A tiny 4-bit LoRA Llama in bfloat16: bytes of the tensors saved for backward versus the
    estimate. Only cos/sin (shared by all blocks) are outside the formula."""
    from lora.inject import LoRAConfig, inject
    from model.llama import Llama
    from model.quant.linear4bit import replace_linears_with_4bit
    cfg = LlamaConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=352)
    torch.manual_seed(0)
    model = Llama(cfg).to(torch.bfloat16)
    dense = {name: m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    replace_linears_with_4bit(model, torch.bfloat16)
    for name, module in model.named_modules():
        if hasattr(module, "quantize_"):
            module.quantize_(dense[name])
    inject(model, LoRAConfig(r=8, targets=targets))
    model.train()
    B, T = 2, 64
    fixed = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in fixed:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.hidden_states(torch.randint(0, 512, (B, T)))
    args = MemoryPlanArgs(lora_r=8, lora_targets=memory.parse_targets(targets), seq_len=T, batch_size=B)
    cos_sin = 2 * T * cfg.head_dim * 2
    assert sum(kept.values()) - cos_sin == pytest.approx(estimate(cfg, args).parts["activations"], rel=0.01)
