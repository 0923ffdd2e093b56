"""Checks on the bundled psychology sample in data/sample/.

The sample is what `python train.py` uses when no other data is given, so these
tests guard its shape (the samhog/psychology-10k schema), its size and spread of
topics, that train and eval never share a message, and the safety rules the
responses follow: no diagnoses, no medication doses, and a crisis line in every
row written for someone in crisis.
"""

import json
import re
from pathlib import Path

import pytest

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
TRAIN_PATH = SAMPLE_DIR / "train.jsonl"
EVAL_PATH = SAMPLE_DIR / "eval.jsonl"

REQUIRED_KEYS = ("instruction", "input", "output")
DOSE = re.compile(r"\d+ ?mg", re.IGNORECASE)
DIAGNOSIS = re.compile(r"you have (depression|anxiety disorder|bipolar|ptsd)", re.IGNORECASE)
# A crisis reply must point to a line the person can use right now.
CRISIS_LINE = re.compile(r"\b988\b|crisis line|emergency services", re.IGNORECASE)


def _read_rows(path):
    """Parse one JSON object per non-blank line (blank lines are checked by their own test)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def train_rows():
    return _read_rows(TRAIN_PATH)


@pytest.fixture(scope="module")
def eval_rows():
    return _read_rows(EVAL_PATH)


@pytest.fixture(scope="module")
def all_rows(train_rows, eval_rows):
    return train_rows + eval_rows


def _norm(text):
    # Compare texts ignoring case and spacing, so trivial edits don't hide a repeat.
    return " ".join(text.lower().split())


@pytest.mark.parametrize("path", [TRAIN_PATH, EVAL_PATH], ids=["train", "eval"])
def test_file_has_no_blank_lines_and_ends_with_one_newline(path):
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and not text.endswith("\n\n")
    blank = [n for n, line in enumerate(text.split("\n")[:-1], start=1) if not line.strip()]
    assert blank == [], f"{path.name}: blank lines at {blank}"


def test_every_row_has_nonempty_instruction_input_output_strings(all_rows):
    for i, row in enumerate(all_rows):
        for key in REQUIRED_KEYS:
            assert isinstance(row.get(key), str), f"row {i}: {key!r} is not a string"
            assert row[key].strip(), f"row {i}: {key!r} is empty"


def test_every_row_uses_the_same_instruction(all_rows):
    assert len({row["instruction"] for row in all_rows}) == 1


def test_train_has_at_least_250_rows(train_rows):
    assert len(train_rows) >= 250


def test_eval_has_at_least_50_rows(eval_rows):
    assert len(eval_rows) >= 50


def test_every_row_has_a_topic(all_rows):
    for i, row in enumerate(all_rows):
        assert isinstance(row.get("topic"), str) and row["topic"], f"row {i} has no topic"


def test_train_covers_at_least_25_distinct_topics(train_rows):
    assert len({row["topic"] for row in train_rows}) >= 25


def test_eval_topics_all_appear_in_train(train_rows, eval_rows):
    assert {row["topic"] for row in eval_rows} <= {row["topic"] for row in train_rows}


@pytest.mark.parametrize("key", ["input", "output"])
def test_no_duplicate_texts_within_or_across_files(all_rows, key):
    seen = {}
    for i, row in enumerate(all_rows):
        text = _norm(row[key])
        assert text not in seen, f"{key} of row {i} repeats row {seen[text]}"
        seen[text] = i


def test_no_eval_input_appears_in_train(train_rows, eval_rows):
    train_inputs = {_norm(row["input"]) for row in train_rows}
    leaked = [row["input"] for row in eval_rows if _norm(row["input"]) in train_inputs]
    assert leaked == []


def test_responses_name_no_medication_dose(all_rows):
    bad = [row["output"][:60] for row in all_rows if DOSE.search(row["output"])]
    assert bad == []


def test_responses_make_no_diagnosis(all_rows):
    bad = [row["output"][:60] for row in all_rows if DIAGNOSIS.search(row["output"])]
    assert bad == []


def test_both_files_contain_crisis_rows(train_rows, eval_rows):
    assert any(row.get("crisis") for row in train_rows)
    assert any(row.get("crisis") for row in eval_rows)


def test_crisis_rows_mention_a_crisis_line(all_rows):
    crisis = [row for row in all_rows if row.get("crisis")]
    missing = [row["input"][:60] for row in crisis if not CRISIS_LINE.search(row["output"])]
    assert missing == []


def test_the_patterns_catch_what_they_are_meant_to_catch():
    # Guards the guards: if a regex above were broken, the tests using it would pass vacuously.
    assert DOSE.search("take 50mg at night") and DOSE.search("20 MG")
    assert DIAGNOSIS.search("It seems you have PTSD.")
    assert CRISIS_LINE.search("call or text 988") and not CRISIS_LINE.search("see your GP")
