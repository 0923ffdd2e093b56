"""data: an over-long field is cut before it is tokenized, and the ids kept are the ids of
tokenizing the whole field and truncating."""

import json
import random

import pytest

from data import Row, build_examples, field_char_limit, format_row
from data import format as data_format
from data.cap import SLACK_CHARS, keep_end, keep_start
from data.format import chat_format_for
from data.rows import SAMPLE_DIR

from conftest import LLAMA3_TOKENIZER

MAX_LEN = 512
AROUND_THE_FIELD = 300  # what is encoded with a field: the template's text, the short fields


class RecordingTokenizer:
    """A tokenizer that notes the length of every text it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.lengths = []

    def encode(self, text, *args, **kwargs):
        self.lengths.append(len(text))
        return self.inner.encode(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def reference_example(row, tokenizer, template, max_len):
    """The Example as it was made before the cut: tokenize every field whole, then truncate."""
    chat = chat_format_for(tokenizer, template)
    messages = [{"role": "system", "content": row.instruction},
                {"role": "user", "content": row.input}]
    prompt = chat.encode_prompt(messages, add_generation_prompt=True)
    reply = tokenizer.encode(row.output) + list(chat.end_of_turn_ids())
    return data_format._to_example(prompt, reply, max_len, tokenizer)[0]


def long_text(n_chars, seed=0):
    """n_chars of words from the bundled replies, with a line break now and then."""
    lines = (SAMPLE_DIR / "train.jsonl").read_text().splitlines()
    words = " ".join(json.loads(line)["output"] for line in lines).split()
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        part = rng.choice(words) + ("\n" if rng.random() < 0.03 else " ")
        parts.append(part)
        size += len(part)
    return "".join(parts)[:n_chars].strip()


@pytest.fixture(scope="module")
def megabyte():
    return long_text(1_000_000)


@pytest.fixture(scope="module")
def llama3_tokenizer():
    if not LLAMA3_TOKENIZER.is_file():
        pytest.skip(f"no Llama-3 tokenizer at {LLAMA3_TOKENIZER}")
    from model import load_tokenizer
    return load_tokenizer(LLAMA3_TOKENIZER)


@pytest.mark.parametrize("field", ["output", "input", "instruction"])
@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_a_megabyte_field_is_cut_before_tokenizing_with_the_same_ids(
        smollm2_tokenizer, megabyte, field, template):
    fields = {"instruction": "Be kind.", "input": "I feel low.", "output": "I hear you."}
    fields[field] = megabyte
    row = Row(**fields)
    tok = RecordingTokenizer(smollm2_tokenizer)
    examples, stats = build_examples([row], tok, template, MAX_LEN, progress=False)
    assert max(tok.lengths) <= field_char_limit(MAX_LEN) + AROUND_THE_FIELD
    assert stats.capped == 1
    expected = reference_example(row, smollm2_tokenizer, template, MAX_LEN)
    assert examples[0].input_ids == expected.input_ids
    assert examples[0].labels == expected.labels


@pytest.mark.parametrize("field", ["output", "input"])
def test_llama3_format_cut_keeps_the_same_ids(llama3_tokenizer, megabyte, field):
    fields = {"instruction": "Be kind.", "input": "I feel low.", "output": "I hear you."}
    fields[field] = megabyte
    row = Row(**fields)
    example = format_row(row, llama3_tokenizer, "chat", MAX_LEN)
    expected = reference_example(row, llama3_tokenizer, "chat", MAX_LEN)
    assert example.input_ids == expected.input_ids and example.labels == expected.labels


def test_the_bundled_rows_give_the_same_ids_as_before(smollm2_tokenizer):
    rows = [Row(**{k: d[k] for k in ("instruction", "input", "output")})
            for d in map(json.loads, (SAMPLE_DIR / "train.jsonl").read_text().splitlines())]
    examples, stats = build_examples(rows, smollm2_tokenizer, "chat", MAX_LEN, progress=False)
    assert stats.capped == 0
    for row, example in zip(rows, examples):
        expected = reference_example(row, smollm2_tokenizer, "chat", MAX_LEN)
        assert (example.input_ids, example.labels) == (expected.input_ids, expected.labels)


def test_a_field_within_the_limit_is_not_cut():
    assert keep_start("short text", 100) == "short text"
    assert keep_end("short text", 100) == "short text"


def test_keep_start_cuts_just_before_a_space_after_a_word():
    text = "abc def  ghi jkl"
    assert keep_start(text, 10) == "abc def"  # "abc def  g": the space at 7 follows "f"
    assert keep_start(text, 12) == "abc def  ghi"


def test_keep_end_cuts_at_a_line_start_else_a_word_start():
    assert keep_end("one two\nthree four", 12) == "three four"
    assert keep_end("one two three four", 12) == "three four"


def test_a_field_without_a_break_is_cut_at_the_limit():
    text = "x" * (3 * SLACK_CHARS)
    assert keep_start(text, SLACK_CHARS + 5) == "x" * (SLACK_CHARS + 5)
    assert keep_end(text, SLACK_CHARS + 5) == "x" * (SLACK_CHARS + 5)


def test_a_long_input_without_line_breaks_is_cut_at_a_word_with_the_same_ids(
        smollm2_tokenizer, megabyte):
    row = Row("Be kind.", megabyte.replace("\n", " "), "I hear you.")
    example = format_row(row, smollm2_tokenizer, "chat", MAX_LEN)
    expected = reference_example(row, smollm2_tokenizer, "chat", MAX_LEN)
    assert example.input_ids == expected.input_ids and example.labels == expected.labels
