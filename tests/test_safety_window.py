"""learned.WindowClassifier: which texts of a conversation the classifier scores, and the cache
that lets `python -m safety --file` score a whole chunk of lines in one batched pass."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safety.learned import WindowClassifier

ROOT = Path(__file__).resolve().parents[1]


class CountingModel:
    """A stand-in scorer: P(crisis) 0.9 for texts with "pills", else 0.1; counts its calls."""
    threshold = 0.5

    def __init__(self):
        self.calls: list[list[str]] = []

    def assess(self, texts):
        self.calls.append(list(texts))
        return [(0.9, "suicidal_ideation") if "pills" in t else (0.1, None) for t in texts]


def test_each_turn_and_the_joined_window_are_scored():
    model = CountingModel()
    verdict = WindowClassifier(model, window=2)(["old turn", "hello", "pills counted"])
    assert model.calls == [["hello", "pills counted", "hello\npills counted"]]
    assert verdict.level == "crisis" and verdict.turn == 2 and verdict.scope == "message"


def test_prefetch_scores_many_conversations_in_one_call_and_later_calls_hit_the_cache():
    model = CountingModel()
    window = WindowClassifier(model)
    conversations = [["hi"], ["a", "pills counted"], ["hi", "bye"]]
    window.prefetch(conversations)
    assert len(model.calls) == 1
    assert model.calls[0] == ["hi", "a", "pills counted", "a\npills counted", "bye", "hi\nbye"]
    levels = [window(turns).level for turns in conversations]
    assert levels == ["none", "crisis", "none"] and len(model.calls) == 1


@pytest.mark.slow
def test_file_run_gives_the_same_results_as_one_text_at_a_time(tmp_path):
    texts = ["the pills are counted out on the counter", "I could murder a pizza",
             "thanks for everything, you won't hear from me after tonight"]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    run = lambda *a: subprocess.run([sys.executable, "-m", "safety", *a], cwd=ROOT,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    batch = run("--file", str(path))
    assert batch.returncode == 0, batch.stderr
    one_by_one = [json.loads(run(t).stdout) for t in texts]
    assert [json.loads(line) for line in batch.stdout.splitlines()] == one_by_one
