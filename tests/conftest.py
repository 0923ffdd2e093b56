"""Shared fixtures. No test touches the network: the hub is switched to offline mode."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LLAMA3_TOKENIZER = Path(os.environ.get(
    "LLAMA3_TOKENIZER", Path(__file__).resolve().parents[2] / "shared/fixtures/llama3/tokenizer.model"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded default model as an HF folder (converted once from the packaged GGUF)."""
    from model.gguf import default_model_dir
    return default_model_dir()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """Our float32 SmolLM2-135M-Instruct, loaded once per session. Tests must not modify it."""
    from model import load_model
    return load_model(smollm2_dir, dtype="float32", quiet=True)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from model import load_tokenizer
    return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_dir):
    """transformers' LlamaForCausalLM on the same folder: the reference implementation."""
    import torch
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
