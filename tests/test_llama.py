"""Our hand-written Llama gives transformers' logits, on random configs and on real SmolLM2."""

import json

import pytest
import torch

from model import load_model
from model.config import LlamaConfig
from model.generation import SamplingConfig, generate
from tests.helpers import save_hf_checkpoint, tiny_hf_config

LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _parity(tmp_path, hf_config, max_shard_size=None, seq=48):
    hf = save_hf_checkpoint(hf_config, tmp_path, max_shard_size=max_shard_size)
    ours = load_model(tmp_path, dtype="float32")
    ids = torch.randint(0, hf_config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_logits_match_transformers_with_gqa_4_to_1_and_untied_head(tmp_path):
    _parity(tmp_path, tiny_hf_config(num_attention_heads=8, num_key_value_heads=2))


def test_logits_match_transformers_with_tied_embeddings(tmp_path):
    _parity(tmp_path, tiny_hf_config(tie_word_embeddings=True))


def test_logits_match_transformers_with_llama31_rope_scaling_past_original_context(tmp_path):
    # 200 positions > original_max_position_embeddings=64, so all three frequency bands matter.
    _parity(tmp_path, tiny_hf_config(rope_theta=500000.0, rope_scaling=LLAMA31_SCALING), seq=200)


def test_logits_match_transformers_from_a_sharded_checkpoint(tmp_path):
    _parity(tmp_path, tiny_hf_config(), max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1


def test_transformers5_rope_parameters_read_like_classic_keys():
    classic = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 100,
               "intermediate_size": 128, "rope_theta": 500000.0, "rope_scaling": LLAMA31_SCALING}
    v5 = {k: v for k, v in classic.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {"rope_theta": 500000.0, **LLAMA31_SCALING}
    assert LlamaConfig.from_hf(classic) == LlamaConfig.from_hf(v5)
    assert LlamaConfig.from_hf(v5).rope_scaling.factor == 8.0


def test_config_round_trips_through_transformers(tmp_path):
    from transformers import LlamaConfig as HFConfig
    cfg = LlamaConfig.from_hf(tiny_hf_config(rope_scaling=LLAMA31_SCALING, rope_theta=5e5).to_dict())
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf()))
    hf = HFConfig.from_pretrained(tmp_path)
    assert LlamaConfig.from_hf(hf.to_dict()) == cfg


def test_smollm2_logits_match_transformers(smollm2, hf_smollm2, smollm2_tokenizer):
    ids = torch.tensor([smollm2_tokenizer.encode(
        "I have been feeling anxious before every exam and I cannot sleep. What can I do?")])
    with torch.no_grad():
        diff = (smollm2(ids) - hf_smollm2(ids).logits).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers_for_64_tokens(smollm2, hf_smollm2, smollm2_tokenizer):
    from model.tokenizer.chat import get_chat_format
    fmt = get_chat_format(smollm2_tokenizer)
    prompt = fmt.encode_prompt([{"role": "user", "content": "Give me three tips for calming down."}])
    ours = generate(smollm2, prompt, SamplingConfig(max_new_tokens=64), stop_ids=[])
    with torch.no_grad():
        ref = hf_smollm2.generate(torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.ids == ref[0, len(prompt):].tolist()


def test_cached_decoding_gives_the_same_logits_as_a_full_forward(smollm2):
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = smollm2(ids)
        smollm2.setup_cache(1, 32)
        try:
            first = smollm2(ids[:, :16], start_pos=0)               # prefill 16
            chunk = smollm2(ids[:, 16:20], start_pos=16)            # a 4-token chunk after the cache
            steps = [smollm2(ids[:, t:t + 1], start_pos=t) for t in range(20, 24)]  # one at a time
        finally:
            smollm2.clear_cache()
    cached = torch.cat([first, chunk, *steps], dim=1)
    assert (cached - full).abs().max().item() <= 1e-4


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.5)])
def test_sampling_is_reproducible_under_a_seed(smollm2, temperature, top_k, top_p):
    cfg = SamplingConfig(max_new_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p, seed=7)
    prompt = [1, 504, 3458, 314]
    assert generate(smollm2, prompt, cfg).ids == generate(smollm2, prompt, cfg).ids
