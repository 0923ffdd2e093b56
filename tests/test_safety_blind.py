"""The blind set (safety/data/blind/): the figures README reports, asserted, so a regression fails.

The set is never trained or tuned on. safety/data/blind/final_measurement.json holds what README
reports per kind; any change in what detection catches or wrongly flags shows up here.
"""

import json
from pathlib import Path

import pytest

from safety.report import measure, read_labelled

BLIND = Path(__file__).resolve().parents[1] / "safety" / "data" / "blind"
REPORTED = json.loads((BLIND / "final_measurement.json").read_text())


@pytest.fixture(scope="module")
def items():
    return read_labelled(str(BLIND / "blind.jsonl"))


def test_the_blind_set_holds_338_messages_over_27_kinds(items):
    assert len(items) == 338
    assert sum(i["label"] == "crisis" for i in items) == 182
    assert len({i["kind"] for i in items}) == 27


def test_lexicon_alone_on_the_blind_set_gives_the_reported_figures(items):
    got = measure(items, classifier=None)
    assert got == REPORTED["lexicon"]
    assert (got["crisis_recall"], got["false_alarm_rate"]) == (0.2033, 0.0128)


def test_lexicon_and_classifier_on_the_blind_set_give_the_reported_figures(items):
    from safety.classifier import load_classifier
    if load_classifier(quiet=True) is None:
        pytest.skip("the classifier cannot run here (torch or the MiniLM package is missing)")
    got = measure(items, classifier="default")
    assert got == REPORTED["lexicon_and_classifier"]
    assert (got["crisis_recall"], got["false_alarm_rate"]) == (1.0, 0.3718)
