"""The memory planner (tools/memory.py): exact parameter counts, the CLI, config sources, and an
activation estimate that matches what autograd really keeps."""

import json
import math
import re

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
    ("meta-llama/Meta-Llama-3-70B", 70_553_706_496),
    ("meta-llama/Llama-3.1-70B-Instruct", 70_553_706_496),
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


def test_builtin_70b_configs_carry_their_eos_and_rope():
    llama3, instruct, llama31, instruct31 = (memory.BUILTIN_CONFIGS[m] for m in (
        "meta-llama/Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct",
        "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"))
    assert (llama3["eos_token_id"], instruct["eos_token_id"], instruct31["eos_token_id"]) == \
        (128001, 128009, [128001, 128008, 128009])
    assert "rope_scaling" not in llama3 and llama3["max_position_embeddings"] == 8192
    config = load_config("meta-llama/Llama-3.1-70B")[0]
    assert config.rope_scaling.factor == 8.0 and config.max_seq_len == 131072 and llama31["hidden_size"] == 8192
    assert (config.n_layers, config.n_heads, config.n_kv_heads, config.hidden_dim) == (80, 64, 8, 28672)


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


# ----------------------------------------------------------------------------- several GPUs
TINY = LlamaConfig(vocab_size=512, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=352)
STATE = ("NF4 linears: 4-bit values", "NF4 linears: absmax, double quant",
         "embeddings, norms, lm_head (bfloat16)", "LoRA parameters (float32)", "LoRA gradients (float32)",
         "optimizer state (adamw)")
PER_RANK = ("activations (checkpointed)", "logits and loss", "dequantize workspace", "CUDA context")


def plan_args(**kw) -> MemoryPlanArgs:
    return MemoryPlanArgs(lora_r=8, optim="adamw", grad_checkpointing=True, **kw)


def test_fsdp_on_2_ranks_halves_the_sharded_parts_and_adds_the_gathered_ones():
    one = estimate(TINY, plan_args())
    fsdp = estimate(TINY, plan_args(nproc=2, parallel="fsdp"))
    for part in STATE:
        assert 2 * fsdp.parts[f"sharded: {part} (1/2)"] == one.parts[part], part
    for part in PER_RANK:
        assert fsdp.parts[part] == one.parts[part], part
    # By hand: q, o 128x128; k, v 128x64; gate, up, down 128x352. An NF4 matrix of n weights is
    # n/2 + n/64 + 4 * ceil(n/64/256) + 1092 bytes (packed values, absmax, nested absmax, codes).
    nf4_block = 2 * (8192 + 256 + 4 + 1092) + 2 * (4096 + 128 + 4 + 1092) + 3 * (22528 + 704 + 12 + 1092)
    lora_block = 8 * (2 * (128 + 128) + 2 * (128 + 64) + 3 * (128 + 352))     # r * (in + out)
    assert (nf4_block, lora_block) == (102_736, 18_688)
    root = (2 * 512 * 128 + 128) * 2                       # embedding, lm_head, final norm in bf16
    two_blocks = 2 * (nf4_block + 2 * 128 * 2 + lora_block * 4)   # + the block's two norms (bf16)
    assert fsdp.parts["gathered: root (embedding, norm, lm_head)"] == root
    assert fsdp.parts["gathered: 2 blocks"] == two_blocks
    assert fsdp.parts["unsharded: 1 block's LoRA gradients (float32)"] == lora_block * 4
    halved = sum(one.parts[p] for p in STATE) // 2
    assert fsdp.total == one.total - halved + root + two_blocks + lora_block * 4


def test_ddp_adds_exactly_one_copy_of_the_lora_gradients():
    one = estimate(llama3_8b(), MemoryPlanArgs(lora_r=16, grad_checkpointing=True))
    ddp = estimate(llama3_8b(), MemoryPlanArgs(lora_r=16, grad_checkpointing=True, nproc=4, parallel="ddp"))
    assert ddp.parts.pop("DDP gradient buckets (float32)") == 41_943_040 * 4
    assert ddp.parts == one.parts


def test_cpu_offload_moves_the_sharded_parts_off_the_gpu():
    fsdp = estimate(TINY, plan_args(nproc=2, parallel="fsdp"))
    offload = estimate(TINY, plan_args(nproc=2, parallel="fsdp", cpu_offload=True))
    sharded = {p: b for p, b in fsdp.parts.items() if p.startswith("sharded: ")}
    assert len(sharded) == len(STATE) and offload.offloaded == sharded
    assert offload.parts == {p: b for p, b in fsdp.parts.items() if p not in sharded}
    assert offload.total == fsdp.total - sum(sharded.values())


def test_cli_prints_the_ranks_and_the_offloaded_cpu_ram(capsys):
    main(["--model", "meta-llama/Llama-3.2-1B", "--optim", "adamw", "--nproc", "2", "--parallel", "fsdp",
          "--cpu-offload", "--gpu-gib", "24"])
    out = capsys.readouterr().out
    assert "per GPU, 2 ranks, FSDP (each rank holds 1/2 of the sharded state, in CPU RAM)" in out
    assert "CPU RAM per rank (offloaded shards)" in out and "Verdict: fits one 24.0 GiB GPU per rank" in out


def test_fsdp_load_ram_counts_the_blocks_and_root_train_py_loads(tmp_path, capsys):
    # The TINY shape as a real checkpoint, loaded as train.py loads it: NF4 in bfloat16, LoRA r=8
    # on the seven linears. A block is read whole and sharded before the next one; the root last.
    from lora.inject import LoRAConfig, inject
    from model import load_model
    from tests.helpers import save_hf_checkpoint, tiny_hf_config
    hf = tiny_hf_config(vocab_size=512, hidden_size=128, intermediate_size=352, num_attention_heads=4,
                        num_key_value_heads=2)
    save_hf_checkpoint(hf, tmp_path, dtype=torch.bfloat16)
    model = load_model(tmp_path, dtype="bfloat16", quantize="nf4", quiet=True)
    inject(model, LoRAConfig(r=8, alpha=16, dropout=0.0, targets=memory.TARGETS))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    block = nbytes([*model.layers[0].parameters(), *model.layers[0].buffers()])
    root = nbytes([model.embed_tokens.weight, model.lm_head.weight, model.norm.weight])
    assert root > block     # so the root, read last, is the peak
    offload = estimate(TINY, plan_args(nproc=2, parallel="fsdp", cpu_offload=True))
    assert offload.loading == 2 * (block // 2) + root            # the shards stay in CPU RAM
    on_gpu = estimate(TINY, plan_args(nproc=2, parallel="fsdp"))
    assert on_gpu.loading == root                                # they go to the GPU as made
    assert estimate(TINY, plan_args(nproc=2, parallel="ddp")).loading == 0   # DDP loads on the GPU
    main(["--model", "meta-llama/Meta-Llama-3-70B", "--quantize", "nf4", "--dtype", "bfloat16", "--optim", "adamw",
          "--nproc", "2", "--parallel", "fsdp", "--cpu-offload", "--lora-r", "16", "--grad-checkpointing"])
    assert re.search(r"^  CPU RAM per rank while loading +20\.74 ", capsys.readouterr().out, re.MULTILINE)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_or_fsdp_on_one_rank_is_a_one_rank_run(parallel, capsys):
    assert main(["--model", "meta-llama/Llama-3.2-1B", "--optim", "adamw", "--parallel", parallel]) == 0
    assert f"per GPU, 1 rank, {parallel.upper()}" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "2"], "--nproc 2 with --parallel none: .*--parallel ddp or --parallel fsdp"),
    (["--nproc", "0", "--parallel", "ddp"], "--nproc 0: must be at least 1"),
    (["--cpu-offload"], "--cpu-offload with --parallel none: .*--parallel fsdp"),
    (["--nproc", "2", "--parallel", "ddp", "--cpu-offload"], "--cpu-offload with --parallel ddp"),
    (["--nproc", "2", "--parallel", "fsdp"], "--optim adamw8bit with --parallel fsdp: .*use --optim adamw"),
])
def test_parallel_flag_mistakes_are_one_line_user_errors_naming_the_flag(flags, message):
    with pytest.raises(UserError, match=f"^{message}") as e:
        main(["--model", "meta-llama/Llama-3.2-1B", *flags])
    assert "\n" not in str(e.value)


def llama3_70b_qlora_bytes(n: int) -> tuple[int, int]:
    """(GPU bytes, sharded bytes) per rank of 70B QLoRA r16, 1 x 2048 tokens, checkpointing, AdamW,
    bf16, FSDP over n ranks: the module docstring's rules applied to the config's numbers."""
    d, kv, h, L, V, r, T = 8192, 1024, 28672, 80, 128256, 16, 2048
    matrices = [d * d, d * kv, d * kv, d * d, d * h, d * h, h * d]          # q k v o gate up down
    nf4_block = sum(m // 2 + m // 64 + 4 * math.ceil(m / 64 / 256) + 1092 for m in matrices)
    lora_block = r * (2 * (d + d) + 2 * (d + kv) + 3 * (d + h))
    lora = L * lora_block
    sharded = L * nf4_block + (2 * V * d + (2 * L + 1) * d) * 2 + lora * (4 + 4 + 8)
    gathered = (2 * V * d + d) * 2 + 2 * (nf4_block + 2 * d * 2 + lora_block * 4) + lora_block * 4
    per_token_block = (2 * (4 * d + 4)                          # RMSNorms' float32 input and 1/rms
                       + 2 * (2 * d + 2 * kv) + 4 * 64          # attention: q, k, v, out, logsumexp
                       + 3 * h * 2                              # SwiGLU
                       + 4 * (3 * d + d + 2 * d + h) + 4 * r * 7)   # LoRA inputs (fp32) and A outputs
    scaled_b = 4 * r * (d + kv + kv + d + h + h + d)
    activations = T * (L * d * 2 + per_token_block) + scaled_b
    logits = (2**26 // V) * V * (2 + 4 + 4)
    per_rank = activations + logits + d * h * 2 + 2**29       # + dequantize workspace, CUDA context
    return sharded // n + gathered + per_rank, sharded // n


@pytest.mark.parametrize("nproc, gpu_gib, offload, total_gib, fits", [
    (2, 24.0, False, 29.90, False),
    (2, 24.0, True, 9.95, True),
    (4, 15.0, False, 19.92, False),
    (4, 15.0, True, 9.95, True),
])
def test_llama3_70b_qlora_on_2x24gb_and_4x16gb(nproc, gpu_gib, offload, total_gib, fits, capsys):
    flags = ["--model", "meta-llama/Meta-Llama-3-70B", "--quantize", "nf4", "--lora-r", "16", "--seq-len", "2048",
             "--batch-size", "1", "--grad-checkpointing", "--optim", "adamw", "--dtype", "bfloat16",
             "--nproc", str(nproc), "--parallel", "fsdp", "--gpu-gib", str(gpu_gib)]
    main(flags + ["--cpu-offload"] * offload)
    out = capsys.readouterr().out
    config = load_config("meta-llama/Meta-Llama-3-70B")[0]
    args = MemoryPlanArgs(lora_r=16, seq_len=2048, batch_size=1, grad_checkpointing=True, optim="adamw",
                          nproc=nproc, parallel="fsdp", cpu_offload=offload, gpu_gib=gpu_gib)
    plan = estimate(config, args)
    gpu, sharded = llama3_70b_qlora_bytes(nproc)
    assert plan.total == (gpu - sharded if offload else gpu)
    assert plan.offloaded_total == (sharded if offload else 0)
    assert round(plan.total / memory.GIB, 2) == total_gib and plan.fits == fits
    assert re.search(rf"^  total +{total_gib:.2f}$", out, re.MULTILINE)
    gpu_words = "a 16 GB T4 (15.0 GiB usable)" if gpu_gib == 15.0 else "one 24.0 GiB GPU"
    assert f"Verdict: {'fits' if fits else 'does NOT fit'} {gpu_words} per rank" in out
