"""The char-RNN / char-LSTM baselines: training, bits per character, saving, sampling."""

import json
import math
import random
from pathlib import Path

import pytest
import torch

from model.errors import UserError
from model.rnn import (END, SEP, UNK, CharConfig, CharModel, CharVocab, bits_per_char,
                       is_char_run, load_char_model, row_text, sample_answer, save_char_model,
                       temperature_probs, unigram_bits_per_char)
from training.char import train_char_model

FEELINGS = ["anxious", "tired", "lonely", "overwhelmed", "sad", "restless", "numb", "tense"]
TIMES = ["at night", "in the morning", "at work", "on weekends", "after class", "at home"]


def make_rows(n: int, seed: int) -> list[str]:
    """Short support-style exchanges with a regular shape a small model can pick up."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        feeling, time = rng.choice(FEELINGS), rng.choice(TIMES)
        rows.append(row_text(f"I feel {feeling} {time} and I do not know why.",
                             f"Feeling {feeling} {time} sounds hard. What tends to happen {time}?"))
    return rows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: a second thread only adds synchronisation, badly so on a busy
    machine. Restored afterwards for the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(embed_dim=16, hidden=64, layers=1, dropout=0.0, seq_len=48, batch_size=16,
            lr=1e-2, steps=150, eval_every=50, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LSTM run shared by the save/load and sampling tests."""
    out = tmp_path_factory.mktemp("lstm")
    train, held_out = make_rows(120, seed=1), make_rows(20, seed=2)
    result = train_char_model(train, held_out, CharConfig(arch="lstm", **TINY), out,
                              log=lambda line: None)
    return out, result, "".join(held_out)


def test_row_text_joins_message_and_response_with_sep_and_end():
    assert row_text(" I can't cope \x03", "You are not alone.\x1e ") == \
        "I can't cope" + SEP + "You are not alone." + END


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_short_training_beats_the_unigram_baseline(arch, tmp_path):
    train, held_out = make_rows(120, seed=1), make_rows(20, seed=2)
    result = train_char_model(train, held_out, CharConfig(arch=arch, **TINY), tmp_path,
                              log=lambda line: None)
    assert result["unigram_bpc"] == pytest.approx(
        unigram_bits_per_char("".join(train), "".join(held_out)))
    assert result["val_bpc"] < result["unigram_bpc"] - 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150]
    assert records[-1]["val_bpc"] == pytest.approx(result["val_bpc"], abs=1e-4)


def test_training_is_deterministic_under_a_seed(tmp_path):
    config = CharConfig(arch="lstm", **{**TINY, "steps": 20, "eval_every": 20, "dropout": 0.2})
    rows, held_out = make_rows(40, seed=1), make_rows(5, seed=2)
    first = train_char_model(rows, held_out, config, tmp_path / "a", log=lambda line: None)
    second = train_char_model(rows, held_out, config, tmp_path / "b", log=lambda line: None)
    assert first["val_bpc"] == second["val_bpc"]
    model_a, _ = load_char_model(tmp_path / "a")
    model_b, _ = load_char_model(tmp_path / "b")
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name


def test_unigram_baseline_by_hand():
    # counts a=2, b=1; K = 2 seen chars + 1 unknown bucket; p(c) = (count + 1) / (3 + 3).
    # eval "ab": -log2(3/6) - log2(2/6) = 1 + log2(3), over 2 characters.
    assert unigram_bits_per_char("aab", "ab") == pytest.approx((1 + math.log2(3)) / 2)
    # an unseen character falls in the unknown bucket: -log2(1/6)
    assert unigram_bits_per_char("aab", "z") == pytest.approx(math.log2(6))


def test_vocab_maps_unseen_characters_to_unk_and_round_trips_through_json(tmp_path):
    vocab = CharVocab.build("hello")
    assert vocab.chars[0] == UNK and SEP in vocab.chars and END in vocab.chars
    assert vocab.encode("hz") == [vocab.index["h"], 0]
    vocab.save(tmp_path / "vocab.json")
    assert CharVocab.load(tmp_path / "vocab.json").chars == vocab.chars


def test_bits_per_char_does_not_depend_on_the_chunk_size(trained):
    out, _, held_out = trained
    model, vocab = load_char_model(out)
    assert bits_per_char(model, vocab, held_out, chunk=7) == \
        pytest.approx(bits_per_char(model, vocab, held_out, chunk=4096), abs=1e-5)


def test_save_and_load_round_trip(trained):
    out, result, held_out = trained
    assert is_char_run(out)
    model, vocab = load_char_model(out)
    assert not model.training and model.config == CharConfig(arch="lstm", **TINY)
    assert bits_per_char(model, vocab, held_out) == pytest.approx(result["val_bpc"], abs=1e-6)


def test_a_save_killed_mid_write_keeps_the_previous_model(trained, tmp_path, monkeypatch):
    import shutil
    out, result, held_out = trained
    shutil.copy(out / "char_model.pt", tmp_path / "char_model.pt")
    model, vocab = load_char_model(tmp_path)

    def killed(obj, f, *a, **k):
        Path(f).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_char_model(model, vocab, tmp_path)
    monkeypatch.undo()
    again, _ = load_char_model(tmp_path)
    assert bits_per_char(again, vocab, held_out) == pytest.approx(result["val_bpc"], abs=1e-6)


def test_a_folder_without_checkpoint_is_not_a_char_run(tmp_path):
    assert not is_char_run(tmp_path)
    with pytest.raises(UserError, match="char_model.pt"):
        load_char_model(tmp_path)


def test_unknown_arch_is_refused_by_name():
    with pytest.raises(UserError, match="'gru'"):
        CharConfig(arch="gru")


def test_sampling_with_a_seed_is_deterministic(trained):
    model, vocab = load_char_model(trained[0])
    first = sample_answer(model, vocab, "I feel tense at night.", seed=3)
    assert first == sample_answer(model, vocab, "I feel tense at night.", seed=3)
    assert len({sample_answer(model, vocab, "I feel tense at night.", temperature=1.5, seed=s)
                for s in range(4)}) > 1


def rigged_model(vocab: CharVocab, favoured: dict[str, float]) -> CharModel:
    """A model whose next-character logits ignore the input: `favoured` chars get the given
    logits, every other character -inf-like."""
    model = CharModel(len(vocab), CharConfig(arch="rnn", embed_dim=4, hidden=4, dropout=0.0))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-1e4)
        for ch, logit in favoured.items():
            model.head.bias[vocab.index[ch]] = logit
    return model


def test_sampling_stops_at_end_and_leaves_it_out():
    vocab = CharVocab.build("xyz")
    model = rigged_model(vocab, {"x": 0.0, END: 0.0})      # each step: x or END, half each
    answers = [sample_answer(model, vocab, "hello", max_chars=200, seed=s) for s in range(5)]
    for answer in answers:
        assert answer == "x" * len(answer) and len(answer) < 200
    assert sample_answer(rigged_model(vocab, {END: 0.0}), vocab, "hello") == ""


def test_sampling_runs_to_max_chars_when_end_never_comes():
    vocab = CharVocab.build("xyz")
    model = rigged_model(vocab, {"y": 0.0})
    assert sample_answer(model, vocab, "hello", max_chars=25) == "y" * 25


def test_temperature_divides_the_logits_before_softmax():
    logits = torch.tensor([0.0, math.log(2.0)])                # odds 1 : 2 at temperature 1
    assert temperature_probs(logits, 1.0).tolist() == pytest.approx([1 / 3, 2 / 3])
    assert temperature_probs(logits, 0.5).tolist() == pytest.approx([1 / 5, 4 / 5])   # 1 : 4
    r = math.sqrt(2.0)                                          # temperature 2: odds 1 : sqrt2
    assert temperature_probs(logits, 2.0).tolist() == pytest.approx([1 / (1 + r), r / (1 + r)])
    assert temperature_probs(logits, 0.0).tolist() == [0.0, 1.0]   # greedy
