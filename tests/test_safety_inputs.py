"""Bad and extreme input to the safety layer: each gets a defined result or a one-line error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safety import SafetyError, detect
from safety.text import windows

ROOT = Path(__file__).resolve().parents[1]
SMALL_TALK = "We went to the market and then had tea with my aunt, the weather was lovely. "


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "safety", *args], cwd=ROOT, capture_output=True,
                          timeout=120)


def test_empty_text_has_no_risk():
    result = detect("", classifier=None)
    assert (result.level, result.matches) == ("none", [])


def test_conversation_without_a_user_turn_has_no_risk():
    result = detect([{"role": "assistant", "content": "I want to die"}], classifier=None)
    assert result.level == "none"
    assert detect([], classifier=None).level == "none"


def test_a_crisis_sentence_at_the_end_of_a_megabyte_message_is_found():
    text = SMALL_TALK * (1_000_000 // len(SMALL_TALK)) + "I want to kill myself tonight."
    assert len(text) > 1_000_000
    result = detect(text, classifier=None)
    assert result.level == "crisis"
    assert any("kill myself" in m.phrase for m in result.matches)


def test_a_phrase_across_a_window_boundary_is_found():
    """Windows overlap: the phrase lands whole in one of them wherever the cut falls."""
    for pad in range(3990, 4010, 3):
        text = "x" * pad + " I want to kill myself " + "y" * 5000
        assert detect(text, classifier=None).level == "crisis", pad


def test_windows_cover_the_whole_text_in_order():
    text = "".join(f"Sentence number {i} is here. " for i in range(2000))
    pieces = windows(text, 4000, 400)
    assert len(pieces) > 10 and all(len(p) <= 4000 for p in pieces)
    assert pieces[0] == text[: len(pieces[0])] and text.endswith(pieces[-1])
    covered, end = 0, 0
    for piece in pieces:  # each piece starts no later than where the last one ended
        start = text.index(piece, max(0, end - 400))
        assert start <= end
        end = start + len(piece)
        covered = max(covered, end)
    assert covered == len(text)


def test_non_utf8_line_in_a_file_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    proc = run_cli("--file", str(path))
    assert proc.returncode == 2
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "in.jsonl line 2" in err[0] and "UTF-8" in err[0]


def test_non_utf8_text_argument_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "safety", b"caf\xe9 tonight"], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "UTF-8" in err[0]


def test_file_lines_with_empty_text_and_no_user_turn_get_defined_results(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": ""}) + "\n" +
                    json.dumps({"messages": [{"role": "assistant", "content": "hello"}]}) + "\n")
    proc = run_cli("--file", str(path))
    assert proc.returncode == 0, proc.stderr
    levels = [json.loads(line)["level"] for line in proc.stdout.decode().splitlines()]
    assert levels == ["none", "none"]


def test_content_of_a_wrong_type_is_a_safety_error():
    with pytest.raises(SafetyError, match="message 0"):
        detect([{"role": "user", "content": 5}], classifier=None)


def test_resolved_past_crisis_is_concern_not_crisis():
    for text in ("I self-harmed in school, I'm ten years clean now.",
                 "After my suicide attempt in 2015 I got help, and today I am doing well."):
        assert detect(text, classifier=None).level == "concern", text


def test_a_past_crisis_that_is_back_stays_crisis():
    for text in ("I tried to kill myself years ago and lately I want to kill myself again.",
                 "I was ten years clean from cutting myself but I want to cut myself tonight."):
        assert detect(text, classifier=None).level == "crisis", text


def test_a_classifier_verdict_keeps_the_lexicon_phrases_and_adds_score_and_threshold():
    from safety.learned import Verdict
    verdict = Verdict("crisis", ["self_harm"], 0.91, 0.5, 0, "message")
    result = detect("I want to die", classifier=lambda turns: verdict)
    out = result.to_dict()
    assert out["level"] == "crisis" and any(m["pattern"].startswith("si.") for m in out["matches"])
    assert out["classifier"] == {"score": 0.91, "threshold": 0.5, "scope": "message"}


def test_report_names_the_line_of_a_bad_labelled_file(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps({"text": "fine", "label": "non_crisis"}) + "\n" +
                    json.dumps({"text": "no label here"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "safety.report", str(path), "--lexicon-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "labelled.jsonl line 2" in err[0] and "label" in err[0]


def test_asking_how_to_help_others_is_concern_unless_someone_is_in_danger_now():
    for text in ("How do you ask someone directly if they're thinking about suicide?",
                 "As a carer, how should I ask my client if she's having suicidal thoughts?",
                 "what are warning signs a student might be thinking about suicide?"):
        assert detect(text, classifier=None).level == "concern", text
    for text in ("My friend says she wants to die tonight, how do I help her?",
                 "As a nurse, how do I cope? I want to kill myself."):
        assert detect(text, classifier=None).level == "crisis", text


def test_hyperbole_about_something_tedious_is_concern_but_a_plain_threat_to_self_is_not():
    assert detect("If I hear that song one more time I'll shoot myself, honestly.",
                  classifier=None).level == "concern"
    assert detect("I'll shoot myself tonight.", classifier=None).level == "crisis"


def test_a_past_told_as_past_is_concern_and_wanting_to_write_about_it_is_not_a_return():
    for text in ("Remember when I wanted to die after the divorce? So glad I'm still here.",
                 "I used to think everyone would be better off without me. Recovery is real.",
                 "After my suicide attempt in 2015 I got help. I want to write about it now."):
        assert detect(text, classifier=None).level == "concern", text
    for text in ("I used to want to die and now I want to die again.",
                 "I tried to kill myself in 2015 and I can't take it anymore."):
        assert detect(text, classifier=None).level == "crisis", text


def test_school_in_a_teenagers_message_is_not_the_past():
    text = "I'm 16 and my mom's boyfriend hits me. I'm hiding at school in the library."
    assert detect(text, classifier=None).level == "crisis"
