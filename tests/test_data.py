"""data: rows -> token ids + loss mask -> batches."""

import json
import random

import pytest
import torch

from data import (DEFAULT_INSTRUCTION, IGNORE_INDEX, Batcher, Example, Row, build_examples,
                  eval_batches, format_row, load_rows, load_train_eval, pad_batch, pad_id_for,
                  split_rows)
from data import format as data_format
from data.batches import CHUNK_BATCHES
from data.rows import SAMPLE_DIR
from model.tokenizer.chat import alpaca_prompt
from model.errors import UserError


# ------------------------------------------------------------------------------------ helpers
class CharTokenizer:
    """One token per character (id = code point), BOS 1, EOS 2: ids a test can write by hand."""
    source = "char-tokenizer"
    special_tokens: dict = {}
    chat_template = None
    vocab_size = 0x110000

    def __init__(self, add_bos=True, pad_id=None):
        self.bos_id, self.eos_id, self.pad_id, self.add_bos = 1, 2, pad_id, add_bos

    def encode(self, text, bos=False, eos=False, allow_special=False):
        return [1] * bos + [ord(c) for c in text] + [2] * eos

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def token_id(self, token):
        return None


class BracketChat:
    """A chat format with made-up control ids: [90] system [91] user [92] reply [93]."""
    name = "bracket"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_prompt(self, messages, add_generation_prompt=True):
        ids = []
        for marker, message in zip((90, 91), messages):
            ids += [marker] + self.tokenizer.encode(message["content"])
        return ids + [92]

    def end_of_turn_ids(self):
        return [93]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row_dict(i, **kw):
    d = {"instruction": "Be kind.", "input": f"message {i}", "output": f"reply {i}"}
    d.update(kw)
    return d


def example(n, start=10):
    """An Example of n tokens whose last two carry labels."""
    ids = list(range(start, start + n))
    return Example(ids, [IGNORE_INDEX] * (n - 2) + ids[-2:])


# ------------------------------------------------------------------------------------ loading
def test_jsonl_rows_load_and_extra_keys_are_ignored(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [row_dict(1, topic="sleep"), row_dict(2)])
    rows, stats = load_rows(path)
    assert rows == [Row("Be kind.", "message 1", "reply 1"),
                    Row("Be kind.", "message 2", "reply 2")]
    assert (stats.read, stats.kept, stats.skipped, stats.duplicates) == (2, 2, 0, 0)


def test_json_array_loads(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([row_dict(1), row_dict(2)], indent=2))
    rows, _ = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 2"]


def test_json_file_holding_json_lines_loads(tmp_path):
    path = write_jsonl(tmp_path / "rows.json", [row_dict(1), row_dict(2)])
    rows, _ = load_rows(path)
    assert [r.output for r in rows] == ["reply 1", "reply 2"]


def test_csv_loads_with_a_quoted_field_spanning_lines(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,input,output\nBe kind.,"first line\nsecond, line",reply\n')
    rows, _ = load_rows(path)
    assert rows == [Row("Be kind.", "first line\nsecond, line", "reply")]


def test_folder_loads_every_data_file_but_keeps_eval_files_apart(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [row_dict(1)])
    (tmp_path / "nested").mkdir()
    write_jsonl(tmp_path / "nested" / "b.jsonl", [row_dict(2)])
    write_jsonl(tmp_path / "eval.jsonl", [row_dict(3)])
    rows, stats = load_rows(tmp_path)
    assert [r.input for r in rows] == ["message 1", "message 2"]
    assert len(stats.files) == 2


def test_strict_invalid_json_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row_dict(1)) + "\n" + '{"input": "x", "output": \n')
    with pytest.raises(UserError, match=r"rows\.jsonl:2 is not valid JSON"):
        load_rows(path, strict=True)


def test_invalid_json_array_names_the_line(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"input": "a", "output": "b"},\n  {"input": "c" "output": "d"}\n]\n')
    with pytest.raises(UserError, match=r"rows\.json:3 is not valid JSON"):
        load_rows(path)


def test_strict_csv_row_with_too_many_fields_names_the_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("instruction,input,output\na,b,c\na,b,c,d\n")
    with pytest.raises(UserError, match=r"rows\.csv:3 has more fields"):
        load_rows(path, strict=True)


def test_strict_csv_with_broken_quoting_names_the_line(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('instruction,input,output\na,b,c\na,"b"x,c\n')
    with pytest.raises(UserError, match=r"rows\.csv:3 is not valid CSV"):
        load_rows(path, strict=True)


def test_file_without_the_required_columns_names_them(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError, match=r"rows\.jsonl has no 'input' or 'output' column"):
        load_rows(path)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n\n")
    with pytest.raises(UserError, match=r"rows\.jsonl is empty"):
        load_rows(path)


def test_rows_with_empty_or_missing_fields_are_skipped_with_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        row_dict(1), row_dict(2, output="  "), {"instruction": "x", "output": "y"},
        row_dict(4, input=None), row_dict(5)])
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 5"]
    assert (stats.read, stats.kept, stats.skipped) == (5, 2, 3)
    assert stats.skipped_where == ["rows.jsonl:2", "rows.jsonl:3", "rows.jsonl:4"]


def test_empty_instruction_gets_the_default_instruction(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [row_dict(1, instruction=""),
                                                 {"input": "m", "output": "r"}])
    rows, stats = load_rows(path)
    assert [r.instruction for r in rows] == [DEFAULT_INSTRUCTION, DEFAULT_INSTRUCTION]
    assert stats.default_instruction == 2


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [row_dict(1), row_dict(2), row_dict(1),
                                                 row_dict(1, output=" reply 1 ")])
    rows, stats = load_rows(path)
    assert [r.input for r in rows] == ["message 1", "message 2"]
    assert stats.duplicates == 2


def test_file_with_no_usable_row_raises(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [row_dict(1, output=""), row_dict(2, input="")])
    with pytest.raises(UserError, match="no usable rows"):
        load_rows(path)


def test_missing_local_file_raises(tmp_path):
    with pytest.raises(UserError, match="neither an existing file"):
        load_rows(tmp_path / "nope.jsonl")


def test_hub_id_offline_and_not_cached_raises_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(UserError, match=r"'samhog/psychology-10k'.*local \.json, \.jsonl or \.csv"):
        load_rows("samhog/psychology-10k")


def test_hub_id_reads_the_files_snapshot_download_returns(tmp_path, monkeypatch):
    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        write_jsonl(tmp_path / "Psychology-10K.json", [row_dict(1)])
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    rows, _ = load_rows("samhog/psychology-10k")
    assert rows == [Row("Be kind.", "message 1", "reply 1")]
    assert calls[0][0] == "samhog/psychology-10k" and calls[0][1]["repo_type"] == "dataset"
    assert set(calls[0][1]["allow_patterns"]) == {"*.json", "*.jsonl", "*.csv"}


@pytest.mark.skipif(not (SAMPLE_DIR / "train.jsonl").is_file(), reason="no bundled sample yet")
def test_sample_source_uses_the_bundled_train_and_eval_files():
    train, evals, stats = load_train_eval("sample")
    assert stats.files == [str(SAMPLE_DIR / "train.jsonl")]
    assert train and evals and not set(train) & set(evals)
    assert evals == load_rows(SAMPLE_DIR / "eval.jsonl")[0]


# ------------------------------------------------------------------------------------ splitting
def rows_n(n):
    return [Row("i", f"message {k}", f"reply {k}") for k in range(n)]


def test_split_holds_out_the_fraction_and_loses_no_row():
    rows = rows_n(1000)
    train, evals = split_rows(rows, eval_fraction=0.05, seed=3407)
    assert len(evals) == 50 and len(train) == 950
    assert sorted(train + evals, key=rows.index) == rows


def test_split_does_not_depend_on_row_order():
    rows = rows_n(300)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert set(split_rows(rows, 0.1)[1]) == set(split_rows(shuffled, 0.1)[1])


def test_split_depends_on_the_seed():
    rows = rows_n(300)
    assert set(split_rows(rows, 0.1, seed=1)[1]) != set(split_rows(rows, 0.1, seed=2)[1])


def test_split_holds_out_at_least_one_row():
    assert len(split_rows(rows_n(20), eval_fraction=0.005)[1]) == 1


def test_split_rejects_a_fraction_of_one():
    with pytest.raises(UserError, match="--eval-fraction"):
        split_rows(rows_n(5), eval_fraction=1.0)


def test_train_eval_uses_a_folders_eval_file_and_removes_its_rows_from_training(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [row_dict(1), row_dict(2), row_dict(3)])
    write_jsonl(tmp_path / "eval.jsonl", [row_dict(3), row_dict(9)])
    train, evals, _ = load_train_eval(tmp_path)
    assert [r.input for r in train] == ["message 1", "message 2"]
    assert [r.input for r in evals] == ["message 3", "message 9"]


def test_train_eval_splits_a_single_file(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [row_dict(i) for i in range(40)])
    train, evals, _ = load_train_eval(path, eval_fraction=0.1)
    assert (train, evals) == split_rows(load_rows(path)[0], 0.1)
    assert len(evals) == 4


# ------------------------------------------------------------------------------------ formatting
ROW = Row("Be kind.", "I feel low.", "I hear you.")


def test_alpaca_labels_cover_exactly_the_reply_and_eos():
    tok = CharTokenizer()
    ex = format_row(ROW, tok, "alpaca", max_len=1000)
    prompt = [1] + [ord(c) for c in alpaca_prompt("Be kind.", "I feel low.")]
    reply = [ord(c) for c in "I hear you."] + [2]
    assert ex.input_ids == prompt + reply
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + reply
    assert not ex.truncated


def test_chat_labels_cover_exactly_the_reply_and_end_of_turn():
    tok = CharTokenizer()
    ex = format_row(ROW, tok, "chat", max_len=1000, chat=BracketChat(tok))
    prompt = [90, *map(ord, "Be kind."), 91, *map(ord, "I feel low."), 92]
    reply = [*map(ord, "I hear you."), 93]
    assert ex.input_ids == prompt + reply
    assert ex.labels == [IGNORE_INDEX] * len(prompt) + reply


def test_chat_template_matches_transformers_chat_template(smollm2_dir, smollm2_tokenizer):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(smollm2_dir)
    messages = [{"role": "system", "content": ROW.instruction},
                {"role": "user", "content": ROW.input}]
    hf_prompt = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    hf_full = hf.apply_chat_template(
        messages + [{"role": "assistant", "content": ROW.output}], tokenize=False)
    ex = format_row(ROW, smollm2_tokenizer, "chat", max_len=1000)
    n_prompt = len(hf(hf_prompt, add_special_tokens=False)["input_ids"])
    hf_ids = hf(hf_full, add_special_tokens=False)["input_ids"]
    assert hf_full.endswith("<|im_end|>\n")  # the template's trailing newline is not learned
    assert ex.input_ids == hf_ids[:-1]
    assert ex.labels == [IGNORE_INDEX] * n_prompt + hf_ids[n_prompt:-1]


def test_alpaca_with_a_real_tokenizer_learns_the_output_then_eos(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = format_row(ROW, tok, "alpaca", max_len=1000)
    learned = [i for i, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    masked = [i for i, label in zip(ex.input_ids, ex.labels) if label == IGNORE_INDEX]
    assert tok.decode(masked) == alpaca_prompt(ROW.instruction, ROW.input)
    assert learned == tok.encode(ROW.output) + [tok.eos_id]


def test_long_reply_is_cut_from_its_end_and_counted():
    tok = CharTokenizer()
    rows = [ROW, Row("Be kind.", "I feel low.", "x" * 5000)]
    examples, stats = build_examples(rows, tok, "alpaca", max_len=400, progress=False)
    long = examples[1]
    n_prompt = 1 + len(alpaca_prompt("Be kind.", "I feel low."))
    assert len(long.input_ids) == 400 and long.truncated
    assert long.labels == [IGNORE_INDEX] * n_prompt + [ord("x")] * (400 - n_prompt)  # no eos
    assert (stats.rows, stats.truncated, stats.prompt_cut) == (2, 1, 0)
    assert stats.longest == n_prompt + 5001


def test_prompt_longer_than_max_len_is_cut_from_the_left_keeping_bos():
    tok = CharTokenizer()
    row = Row("Be kind.", "y" * 500 + "END", "The reply is long enough to be cut.")
    ex = format_row(row, tok, "alpaca", max_len=64)
    keep = data_format.MIN_RESPONSE_TOKENS
    full_prompt = [1] + [ord(c) for c in alpaca_prompt(row.instruction, row.input)]
    assert len(ex.input_ids) == 64 and ex.truncated
    assert ex.input_ids[:1] == [1]
    assert ex.input_ids[1:64 - keep] == full_prompt[-(64 - keep - 1):]
    assert ex.labels == [IGNORE_INDEX] * (64 - keep) + [ord(c) for c in row.output[:keep]]


def test_build_examples_counts_tokens_and_learned_tokens():
    tok = CharTokenizer()
    examples, stats = build_examples([ROW, ROW], tok, "alpaca", max_len=1000, progress=False)
    assert stats.tokens == 2 * len(examples[0].input_ids)
    assert stats.target_tokens == 2 * (len("I hear you.") + 1)


def test_unknown_template_raises():
    with pytest.raises(UserError, match="--template"):
        format_row(ROW, CharTokenizer(), "vicuna", max_len=100)


def test_tiny_max_len_raises():
    with pytest.raises(UserError, match="--max-len"):
        build_examples([ROW], CharTokenizer(), "alpaca", max_len=2, progress=False)


# ------------------------------------------------------------------------------------ batches
def test_pad_batch_right_pads_ids_with_pad_id_and_labels_with_ignore_index():
    batch = pad_batch([example(4), example(2, start=50)], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [50, 51, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 13], [50, 51, -100, -100]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long


def test_pad_id_falls_back_to_eos():
    assert pad_id_for(CharTokenizer(pad_id=None)) == 2
    assert pad_id_for(CharTokenizer(pad_id=7)) == 7


def batch_ids(batch):
    """The first token of each row, which the example() helper makes unique."""
    return batch["input_ids"][:, 0].tolist()


def many_examples(n, seed=0):
    rng = random.Random(seed)
    return [example(rng.randint(3, 60), start=1000 * (k + 1)) for k in range(n)]


@pytest.mark.parametrize("group_by_length", [False, True])
def test_an_epoch_holds_every_example_once(group_by_length):
    examples = many_examples(37)
    batcher = Batcher(examples, batch_size=4, pad_id=0, group_by_length=group_by_length)
    seen = [i for _ in range(len(batcher)) for i in batch_ids(next(batcher))]
    assert sorted(seen) == [1000 * (k + 1) for k in range(37)]
    assert batcher.epoch == 1 and batcher.index == 0


def test_group_by_length_batches_neighbours_in_length_and_puts_the_longest_first():
    examples = many_examples(40)  # one mega-chunk: 40 < 4 * CHUNK_BATCHES
    assert 40 < 4 * CHUNK_BATCHES
    batcher = Batcher(examples, batch_size=4, pad_id=0, group_by_length=True)
    batches = [next(batcher) for _ in range(len(batcher))]
    # Within one chunk, the batches are the examples sorted by length, cut into fours.
    by_length = sorted(range(40), key=lambda k: len(examples[k].input_ids), reverse=True)
    expected = sorted(sorted(len(examples[k].input_ids) for k in by_length[i:i + 4])
                      for i in range(0, 40, 4))
    got = sorted(sorted(len(ex.input_ids) for ex in examples if ex.input_ids[0] in batch_ids(b))
                 for b in batches)
    assert got == expected
    assert batches[0]["input_ids"].shape[1] == max(len(ex.input_ids) for ex in examples)


def test_batcher_order_is_fixed_by_seed_and_changes_with_epoch_and_seed():
    examples = many_examples(24)
    a = [batch_ids(b) for b, _ in zip(Batcher(examples, 4, 0, seed=1), range(12))]
    b = [batch_ids(b) for b, _ in zip(Batcher(examples, 4, 0, seed=1), range(12))]
    c = [batch_ids(b) for b, _ in zip(Batcher(examples, 4, 0, seed=2), range(12))]
    assert a == b
    assert a != c
    assert a[:6] != a[6:]  # epoch 1 is shuffled differently from epoch 0


@pytest.mark.parametrize("stop_at", [3, 7, 10])  # inside epoch 0, on its boundary, inside epoch 1
def test_resumed_batcher_sees_the_same_batches_as_an_uninterrupted_one(stop_at):
    examples = many_examples(27)  # 7 batches of 4 per epoch, the last one of 3
    uninterrupted = Batcher(examples, 4, 0, seed=5, group_by_length=True)
    expected = [batch_ids(next(uninterrupted)) for _ in range(20)]

    first = Batcher(examples, 4, 0, seed=5, group_by_length=True)
    got = [batch_ids(next(first)) for _ in range(stop_at)]
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = Batcher(examples, 4, 0, seed=5, group_by_length=True)
    resumed.load_state_dict(state)
    got += [batch_ids(next(resumed)) for _ in range(20 - stop_at)]
    assert got == expected


def test_resuming_with_different_data_raises():
    state = Batcher(many_examples(27), 4, 0).state_dict()
    with pytest.raises(UserError, match="n_examples=27"):
        Batcher(many_examples(30), 4, 0).load_state_dict(state)


def test_unshuffled_batcher_and_eval_batches_keep_the_order():
    examples = many_examples(10)
    in_order = [[1000 * (k + 1) for k in range(i, min(i + 4, 10))] for i in (0, 4, 8)]
    assert [batch_ids(b) for b in eval_batches(examples, 4, pad_id=0)] == in_order
    batcher = Batcher(examples, 4, 0, shuffle=False)
    assert [batch_ids(next(batcher)) for _ in range(3)] == in_order
