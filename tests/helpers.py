"""Small builders shared by tests: random-weight Llama checkpoints in HF layout."""

import json
from pathlib import Path

import torch


def tiny_hf_config(**overrides):
    """A transformers LlamaConfig small enough to run in milliseconds."""
    from transformers import LlamaConfig
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
              rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_hf_checkpoint(hf_config, folder: Path, seed: int = 0, max_shard_size=None, dtype=torch.float32):
    """Builds transformers' LlamaForCausalLM with random weights and saves it as safetensors."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf_config).to(dtype).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return model


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


from model.checkpoint.save import TOKENIZER_FILES  # noqa: E402


def tiny_model_with_smollm2_tokenizer(folder: Path, smollm2_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with SmolLM2's vocabulary and tokenizer files: trains in seconds."""
    import shutil
    cfg = tiny_hf_config(vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    save_hf_checkpoint(cfg, folder, seed=seed)
    for name in TOKENIZER_FILES:
        if (Path(smollm2_dir) / name).is_file():
            shutil.copy(Path(smollm2_dir) / name, Path(folder) / name)
    return Path(folder)
