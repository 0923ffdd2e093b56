"""--compile (model/compile.py): the decode step through torch.compile gives the eager step's
tokens and logits, compiles once for any prompt and budget, and fails with one line where it
cannot run."""

import subprocess
import sys

import pytest
import torch

from model import UserError
from model.compile import compile_decoding
from model.config import LlamaConfig
from model.generation import SamplingConfig, generate
from model.llama import Llama
from model.quant.weight_only import quantize_for_inference

# vocabulary and widths multiples of 16 and of 32: the int4 kernel's tiles and groups
CONFIG = LlamaConfig(vocab_size=320, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=160,
                     max_seq_len=256, tie_word_embeddings=True)
PROMPTS = [[5, 17, 200, 33], list(range(40, 100)), [7] * 19]


def tiny_llama(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    model = Llama(CONFIG)
    with torch.no_grad():   # larger than the default init, so greedy tokens are not all one token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval().requires_grad_(False)


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def eager_and_compiled_tokens(model, budgets=(12, 30, 5)):
    eager = [generate(model, p, SamplingConfig(max_new_tokens=n)).ids for p, n in zip(PROMPTS, budgets)]
    before = graphs_compiled()
    compile_decoding(model, quiet=True)
    compiled = [generate(model, p, SamplingConfig(max_new_tokens=n)).ids for p, n in zip(PROMPTS, budgets)]
    return eager, compiled, graphs_compiled() - before


@pytest.mark.slow
def test_compiled_float32_decoding_gives_the_eager_tokens_and_compiles_once():
    model = tiny_llama()
    eager, compiled, graphs = eager_and_compiled_tokens(model)
    assert compiled == eager
    assert len(set(map(tuple, eager))) == 3 and len(set(eager[1])) > 3   # a real test: varied tokens
    # one graph for three prompt lengths and budgets (three KV cache lengths): no recompiles
    assert graphs <= 1


@pytest.mark.slow
def test_compiled_step_logits_equal_the_eager_step_at_every_position():
    model = tiny_llama(1)
    compile_decoding(model, quiet=True)
    prompt = torch.tensor([PROMPTS[1]])
    with torch.inference_mode():
        model.setup_cache(1, 80)
        model(prompt, 0)
        for pos in range(60, 70):                                   # the compiled step writes the cache
            token = torch.tensor([[pos % 50 + 3]])
            got = model.compiled_decode(token, torch.tensor([pos]))[0]
            # the eager model on the whole sequence so far, no cache: the reference
            seq = torch.cat([prompt, torch.tensor([[p % 50 + 3 for p in range(60, pos + 1)]])], dim=1)
            model.clear_cache()
            expected = model(seq)[0, -1]
            model.setup_cache(1, 80)
            model(seq, 0)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        model.clear_cache()


@pytest.mark.slow
def test_compiled_int4_decoding_stays_within_bfloat16_rounding_of_eager_int4():
    model = tiny_llama(2)
    quantize_for_inference(model, "int4")
    prompt = torch.tensor([PROMPTS[1]])
    with torch.inference_mode():
        model.setup_cache(1, 64)
        model(prompt, 0)
        eager = model(torch.tensor([[9]]), start_pos=60)[0, -1]
    compile_decoding(model, quiet=True)
    with torch.inference_mode():
        model.setup_cache(1, 64)
        model(prompt, 0)
        compiled = model.compiled_decode(torch.tensor([[9]]), torch.tensor([60]))[0]
    model.clear_cache()
    # the int4 products are bfloat16 kernels; a compiled graph may round them in another order
    assert (compiled - eager).abs().max() <= 0.02 * eager.abs().max()
    assert compiled.argmax() == eager.argmax()


def test_no_cpp_compiler_is_a_one_line_error_naming_the_flag(monkeypatch):
    monkeypatch.setattr("model.compile._cpp_compiler", lambda: None)
    with pytest.raises(UserError, match="^--compile: torch.compile on CPU needs a C\\+\\+ compiler"):
        compile_decoding(tiny_llama())


def test_a_step_torch_compile_cannot_handle_is_a_one_line_error_and_the_model_stays_eager(monkeypatch):
    def failing(fn, **options):
        def step(*args):
            raise torch._dynamo.exc.TorchDynamoException("this step cannot be traced\nmore detail")
        return step

    monkeypatch.setattr("model.compile.torch.compile", failing)
    model = tiny_llama()
    with pytest.raises(UserError) as error:
        compile_decoding(model, quiet=True)
    assert str(error.value) == ("--compile: torch.compile failed (this step cannot be traced); run "
                                "without --compile")
    assert model.compiled_decode is None and model.layers[0].self_attn.kv_cache is None


def test_serve_with_compile_is_a_one_line_error_before_the_model_loads():
    result = subprocess.run([sys.executable, "generate.py", "--serve", "--compile"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == ("error: --compile applies to one conversation at a time; the "
                                     "server (--serve) batches requests and decodes eagerly: drop "
                                     "one of the two")
