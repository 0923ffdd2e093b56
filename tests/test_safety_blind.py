"""The blind sets (safety/data/blind/): the figures README reports, asserted, so a regression fails.

No set is trained or tuned on. blind.jsonl came first; blind2.jsonl was written by a new writer
after the first set's figures had informed a choice (README, "Safety"); blind3.jsonl by another
new writer before the fourth corpus round was trained, and measured once, with the head trained
on it; blind4.jsonl by a fifth writer after that head shipped, measured once with it unchanged.
Each *_measurement.json holds what README reports per kind; any change in what detection catches
or wrongly flags shows up here.
"""

import json
from pathlib import Path

import pytest

from safety.report import measure, read_labelled

BLIND = Path(__file__).resolve().parents[1] / "safety" / "data" / "blind"
SETS = {"blind": ("blind.jsonl", "final_measurement.json"),
        "blind2": ("blind2.jsonl", "blind2_measurement.json"),
        "blind3": ("blind3.jsonl", "blind3_measurement.json"),
        "blind4": ("blind4.jsonl", "blind4_measurement.json")}


def reported(name: str) -> dict:
    return json.loads((BLIND / SETS[name][1]).read_text())


@pytest.fixture(scope="module", params=sorted(SETS))
def blind_set(request):
    return request.param, read_labelled(str(BLIND / SETS[request.param][0]))


def test_each_blind_set_holds_338_messages_over_27_kinds(blind_set):
    _, items = blind_set
    assert len(items) == 338
    assert sum(i["label"] == "crisis" for i in items) == 182
    assert len({i["kind"] for i in items}) == 27


def test_lexicon_alone_gives_the_reported_figures(blind_set):
    name, items = blind_set
    assert measure(items, classifier=None) == reported(name)["lexicon"]


@pytest.mark.slow
def test_lexicon_and_classifier_give_the_reported_figures(blind_set):
    from safety.classifier import load_classifier
    if load_classifier(quiet=True) is None:
        pytest.skip("the classifier cannot run here (torch or the MiniLM package is missing)")
    name, items = blind_set
    assert measure(items, classifier="default") == reported(name)["lexicon_and_classifier"]


def test_the_reported_headline_figures():
    """README's headline numbers, spelled out (the per-kind tables are asserted above)."""
    figures = {name: (reported(name)["lexicon_and_classifier"]["crisis_recall"],
                      reported(name)["lexicon_and_classifier"]["false_alarm_rate"]) for name in SETS}
    assert figures == EXPECTED_HEADLINE


# (crisis recall, false-alarm rate) of lexicon + classifier. The targets are >= 0.95 and <= 0.08:
# false alarms meet them on all four sets; recall on blind2 and blind4. blind3 and blind4 are the
# two sets no decision ever saw: 172 + 178 of 182 + 182 crisis messages (0.962 pooled), 7 + 7 of
# 156 + 156 false alarms (0.045).
EXPECTED_HEADLINE = {"blind": (0.9451, 0.0385), "blind2": (0.9505, 0.0449),
                     "blind3": (0.9451, 0.0449), "blind4": (0.978, 0.0449)}
