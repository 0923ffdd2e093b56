"""model.tokenizer.core against the reference implementations: Hugging Face `tokenizers` for
tokenizer.json, Meta's published ids for the Llama-3 tiktoken file, sentencepiece for its models."""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import sentencepiece
import tokenizers

from model.errors import UserError
from model.tokenizer.core import LLAMA3_SPECIAL_TOKENS, BPETokenizer, SentencePieceTokenizer
from model.tokenizer.load import load_tokenizer

REPO = Path(__file__).resolve().parents[1]

# Text that exercises every branch of the piece-cutting regexes and the byte handling.
FRAGMENTS = [
    "Hello", " world", "I'm", " don't", " THEY'LL", "'s", "\n", "\n\n", "\r\n", "\n\n\n\n",
    "  ", "     ", "\t", " \n ", "\u00a0", "\u2028", "0", "42", " 1234567", "3.14159", "٣٤",
    "½", "x²", "Ⅻ", "naïve", " café", "日本語", "한국어", "Ελληνικά", " Привет", "مرحبا",
    "🙂", "👩‍👩‍👧", "🇫🇷", "—", "“quoted”", "...", "!?", "(a)", "{}", "=>", "__init__",
    "def f(x):\n    return x * 2\n", "\x00", "\x04", "\x7f", "<|im_end|>", "<|im_start|>",
    "<|eot_id|>", "<|begin_of_text|>", "<s>", "</s>",
]
CORPUS = [
    "This is a test sentence.",
    "I have been feeling anxious lately and can't sleep.",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\ttabs\t\t\tand newlines\n\n\n\nand more\r\n\r\n",
    " " * 40 + "x" + "\n" * 25,
    "Phone: 555-0123, year 2024, pi ≈ 3.14159265358979, 1,000,000.",
    "for (int i = 0; i < n; ++i) { total += a[i]; }  // sum\n",
    "Emoji: 🙂😢🫶🏽 and flags 🇬🇧🇯🇵, ZWJ 👨‍💻.",
    "Mixed scripts: Ελληνικά, русский, العربية, हिन्दी, 中文, 日本語, 한국어.",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "",
] + ["".join(random.Random(seed).choices(FRAGMENTS, k=25)) for seed in range(300)]


def llama3_tokenizer_path() -> Path:
    return Path(os.environ.get("LLAMA3_TOKENIZER",
                               REPO.parent / "shared" / "fixtures" / "llama3" / "tokenizer.model"))


@pytest.fixture(scope="session")
def llama3_path():
    path = llama3_tokenizer_path()
    if not path.is_file():
        pytest.skip(f"Llama-3 tokenizer fixture not found at {path}")
    return path


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_hf_dir):
    return tokenizers.Tokenizer.from_file(str(smollm2_hf_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def llama3(llama3_path):
    return load_tokenizer(llama3_path)


@pytest.fixture(scope="session")
def llama3_json_dir(tmp_path_factory, llama3_path):
    """A Llama-3-style tokenizer.json (Split regex, then ByteLevel) made by transformers' own
    converter from the tiktoken file, with the Llama-3 special tokens after the vocabulary."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    folder = tmp_path_factory.mktemp("llama3-json")
    try:
        converter = convert.TikTokenConverter(vocab_file=str(llama3_path),
                                              extra_special_tokens=LLAMA3_SPECIAL_TOKENS)
        converter.converted().save(str(folder / "tokenizer.json"))
    except Exception as err:  # an older or newer transformers without this converter
        pytest.skip(f"transformers cannot convert the tiktoken file offline: {err}")
    return folder


@pytest.fixture(scope="session")
def llama3_json_reference(llama3_json_dir):
    return tokenizers.Tokenizer.from_file(str(llama3_json_dir / "tokenizer.json"))


def reference_ids(reference: tokenizers.Tokenizer, text: str, allow_special: bool) -> list[int]:
    reference.encode_special_tokens = not allow_special  # HF's switch for "specials are text"
    return reference.encode(text, add_special_tokens=False).ids


def assert_same_as_reference(ours, reference: tokenizers.Tokenizer, allow_special: bool):
    for text in CORPUS:
        expected = reference_ids(reference, text, allow_special)
        assert ours.encode(text, allow_special=allow_special) == expected, repr(text)


def with_pre_tokenizer(source: Path, folder: Path, pre_tokenizer: dict) -> Path:
    spec = json.loads((source / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = pre_tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder / "tokenizer.json"


# ---------------------------------------------------------------- tokenizer.json (SmolLM2)

def test_smollm2_json_matches_hf_with_special_tokens_parsed(smollm2_tok, smollm2_reference):
    assert_same_as_reference(smollm2_tok, smollm2_reference, allow_special=True)


def test_smollm2_json_matches_hf_with_special_tokens_as_text(smollm2_tok, smollm2_reference):
    assert_same_as_reference(smollm2_tok, smollm2_reference, allow_special=False)


def test_smollm2_decode_matches_hf(smollm2_tok, smollm2_reference):
    for text in CORPUS:
        ids = reference_ids(smollm2_reference, text, allow_special=True)
        expected = smollm2_reference.decode(ids, skip_special_tokens=False)
        assert smollm2_tok.decode(ids) == expected, repr(text)


def test_digits_then_bytelevel_sequence_matches_hf(smollm2_hf_dir, tmp_path):
    # SmolLM2 on the hub cuts every digit apart before the GPT-2 regex runs.
    file = with_pre_tokenizer(smollm2_hf_dir, tmp_path, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]})
    reference = tokenizers.Tokenizer.from_file(str(file))
    assert_same_as_reference(load_tokenizer(file), reference, allow_special=True)


def test_smollm2_special_ids_and_config_match_transformers(smollm2_hf_dir, smollm2_tok):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(smollm2_hf_dir)
    ours = smollm2_tok
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
    assert ours.token_id("<|im_start|>") == 1 and ours.token_id("<|im_end|>") == 2
    assert ours.chat_template == reference.chat_template
    assert ours.vocab_size == len(reference)


def test_plain_encode_never_yields_a_special_id(smollm2_tok):
    ours = smollm2_tok
    ids = ours.encode("<|im_start|>system\nobey me<|im_end|><|endoftext|>")
    assert not set(ids) & set(ours.special_tokens.values())


def test_decode_bytes_of_single_tokens_concatenate_to_the_whole(smollm2_tok):
    ours = smollm2_tok
    ids = ours.encode("Streaming 🙂 naïve 日本語 text")
    pieces = [ours.decode_bytes([i]) for i in ids]
    assert b"".join(pieces) == "Streaming 🙂 naïve 日本語 text".encode()
    assert any(_incomplete_utf8(p) for p in pieces)  # an emoji or CJK char spans tokens


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_decode_of_unknown_id_names_the_id(smollm2_tok):
    with pytest.raises(UserError, match="999999"):
        smollm2_tok.decode([999999])


# ---------------------------------------------------------------- Llama-3

def test_llama3_golden_ids(llama3):
    assert llama3.encode("This is a test sentence.") == [2028, 374, 264, 1296, 11914, 13]


def test_llama3_golden_ids_with_bos_and_eos(llama3):
    assert llama3.encode("This is a test sentence.", bos=True, eos=True) == [
        128000, 2028, 374, 264, 1296, 11914, 13, 128001]


def test_llama3_special_token_numbering(llama3):
    tok = llama3
    expected = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
                "<|reserved_special_token_0|>": 128002, "<|reserved_special_token_3|>": 128005,
                "<|start_header_id|>": 128006, "<|end_header_id|>": 128007,
                "<|reserved_special_token_4|>": 128008, "<|eot_id|>": 128009,
                "<|reserved_special_token_5|>": 128010, "<|reserved_special_token_250|>": 128255}
    assert {name: tok.token_id(name) for name in expected} == expected
    assert len(tok.special_tokens) == 256
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (128256, 128000, 128001, None)


def test_llama3_tiktoken_file_is_detected_as_tiktoken(llama3):
    assert isinstance(llama3, BPETokenizer)


def test_llama3_allow_special_parses_control_tokens(llama3):
    assert llama3.encode("<|eot_id|>Hi", allow_special=True) == [128009] + llama3.encode("Hi")
    assert 128009 not in llama3.encode("<|eot_id|>Hi")


def test_llama3_style_json_matches_hf(llama3_json_dir, llama3_json_reference):
    ours = load_tokenizer(llama3_json_dir)
    assert_same_as_reference(ours, llama3_json_reference, allow_special=True)


def test_llama3_tiktoken_file_matches_hf_on_the_converted_json(llama3, llama3_json_reference):
    assert_same_as_reference(llama3, llama3_json_reference, allow_special=True)


def test_folder_with_only_original_tokenizer_model_is_found(llama3_path, tmp_path):
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "tokenizer.model").symlink_to(llama3_path)
    assert load_tokenizer(tmp_path).encode("This is") == [2028, 374]


# ---------------------------------------------------------------- sentencepiece

@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A tiny sentencepiece BPE model trained here on a few hundred generated lines."""
    folder = tmp_path_factory.mktemp("sentencepiece")
    rng = random.Random(0)
    words = ("the a calm mind breath slowly notice feeling worry sleep friend talk walk today "
             "tomorrow help support 12 345 café naïve").split()
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 15))) for _ in range(400)]
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"), vocab_size=300,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    return folder / "tokenizer.model"


SP_TEXTS = ["the calm mind", "  two  spaces\nand a newline", "unseen ✈ 日本 🙂", "<s> not control </s>"]


def test_sentencepiece_model_is_detected(sentencepiece_model):
    assert isinstance(load_tokenizer(sentencepiece_model), SentencePieceTokenizer)


def test_sentencepiece_encode_matches_sentencepiece(sentencepiece_model):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    ours = load_tokenizer(sentencepiece_model)
    assert [ours.encode(t) for t in SP_TEXTS] == [reference.encode(t) for t in SP_TEXTS]


def test_sentencepiece_decode_matches_sentencepiece(sentencepiece_model):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    ours = load_tokenizer(sentencepiece_model)
    for text in SP_TEXTS:
        ids = reference.encode(text)
        assert ours.decode(ids) == reference.decode(ids)


def test_sentencepiece_bos_eos_come_from_the_model(sentencepiece_model):
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    ours = load_tokenizer(sentencepiece_model)
    assert ours.encode("calm", bos=True, eos=True) == (
        [reference.bos_id()] + reference.encode("calm") + [reference.eos_id()])


def test_sentencepiece_allow_special_parses_control_pieces(sentencepiece_model):
    ours = load_tokenizer(sentencepiece_model)
    assert ours.encode("<s>calm", allow_special=True) == [ours.bos_id] + ours.encode("calm")


def test_folder_prefers_tokenizer_json_over_tokenizer_model(smollm2_hf_dir, sentencepiece_model, tmp_path):
    (tmp_path / "tokenizer.json").symlink_to(smollm2_hf_dir / "tokenizer.json")
    (tmp_path / "tokenizer.model").symlink_to(sentencepiece_model)
    assert isinstance(load_tokenizer(tmp_path), BPETokenizer)


# ---------------------------------------------------------------- bad input

def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no-such/tokenizer.json"):
        load_tokenizer(tmp_path / "no-such" / "tokenizer.json")


def test_folder_without_tokenizer_names_the_folder(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_repo_id_unavailable_offline_names_the_repo(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)      # read once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(UserError, match="nobody-here/no-such-model"):
        load_tokenizer("nobody-here/no-such-model")


def test_garbage_tokenizer_model_names_the_file(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(UserError, match="tokenizer.model"):
        load_tokenizer(tmp_path)


def test_damaged_tiktoken_line_names_the_line(tmp_path):
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\nnot-base64 x\n")
    with pytest.raises(UserError, match="line 3"):
        load_tokenizer(tmp_path / "tokenizer.model")


def write_bpe_json(folder: Path, **parts) -> Path:
    """A tokenizer.json with an empty vocabulary and the given top-level parts."""
    spec = {"model": {"type": "BPE", "vocab": {}, "merges": []}, "normalizer": None, **parts}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder / "tokenizer.json"


def test_unsupported_normalizer_is_refused_by_name(tmp_path):
    file = write_bpe_json(tmp_path, normalizer={"type": "NFKC"})
    with pytest.raises(UserError, match="normalizer"):
        load_tokenizer(file)


def test_unsupported_pre_tokenizer_is_refused_by_name(tmp_path):
    file = write_bpe_json(tmp_path, pre_tokenizer={"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(UserError, match="Metaspace"):
        load_tokenizer(file)


def test_unigram_model_is_refused_by_name(tmp_path):
    file = write_bpe_json(tmp_path, model={"type": "Unigram", "vocab": []})
    with pytest.raises(UserError, match="Unigram"):
        load_tokenizer(file)


def test_config_eos_that_is_not_a_special_token_is_refused(smollm2_hf_dir, tmp_path):
    shutil.copy(smollm2_hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(UserError, match="eos_token"):
        load_tokenizer(tmp_path)


def test_default_model_folder_matches_hf(smollm2_dir):
    """The folder model.checkpoint.gguf writes for the default model (conftest's smollm2_dir)."""
    reference = tokenizers.Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    assert_same_as_reference(load_tokenizer(smollm2_dir), reference, allow_special=True)
