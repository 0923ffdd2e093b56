"""The synthetic-data pipeline (synth/) against a scripted local server (tests/fakeapi.py).

No test touches the internet: every request goes to a FakeAPI on 127.0.0.1.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from synth.cli import main
from synth.cost import UsageMeter, price_for
from synth.dedup import NearDuplicateIndex, jaccard, normalise, shingles
from synth.errors import BadReply
from synth.jsonl import AppendOnlyJsonl
from synth.personas import TOPICS, persona_for, topic_for
from synth.prompts import DEFAULT_INSTRUCTION, EVALUATOR_SYSTEM
from synth.retry import RetryPolicy, backoff_delay, call_with_retries
from synth.scoring import parse_evaluation
from tests.fakeapi import FakeAPI

REPO = Path(__file__).resolve().parent.parent
RETRYABLE_FAULTS = ["429", "500", "timeout", "malformed", "drop"]
# As many retries as scheduled faults (3 x 5): no row can run out of retries, whatever order
# the threads meet the faults in, and a circuit breaker that 15 failures in a row do not trip.
# 401 and 404 end a run, so they have tests of their own.
ENOUGH_RETRIES = ["--max-retries", "15", "--max-consecutive-failures", "16"]
FAST = ["--model", "fake-model", "--timeout", "10", "--retry-base-delay", "0.001",
        "--retry-max-delay", "0.01"]
TIMEOUT_FAULT = ["--timeout", "0.5"]  # with FakeAPI(slow_seconds=1.0): a "timeout" times out


@pytest.fixture(autouse=True)
def no_real_key(monkeypatch):
    """Tests must not pick up a developer's key or base URL from the environment."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def write_patients(path: Path, n: int, start: int = 0) -> list[str]:
    ids = [f"p{i:03d}" for i in range(start, start + n)]
    with open(path, "a", encoding="utf-8") as f:
        for row_id in ids:
            f.write(json.dumps({"id": row_id, "instruction": DEFAULT_INSTRUCTION,
                                "input": f"message number {row_id}: I feel low.",
                                "output": ""}) + "\n")
    return ids


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def synth(api: FakeAPI, stage: str, *argv: str) -> int:
    """python -m synth STAGE against the fake server; flags in argv win over FAST's."""
    return main([stage, "--base-url", api.base_url, *FAST, *argv])


# A scripted evaluator: round k of an answer carries k "[rewritten]" marks, the evaluator scores
# it from `scores_by_round`, and the psychologist's rewrite adds one more mark.
def refine_reply(scores_by_round):
    def reply(messages, model):
        if messages[0]["content"] == EVALUATOR_SYSTEM:
            k = messages[-1]["content"].count("[rewritten]")
            return json.dumps({"empathy": "warm", "gaps": f"round {k} gap",
                               "feedback": f"improve round {k}", "score": scores_by_round[k]})
        if messages[-1]["role"] == "user" and len(messages) == 4:  # a rewrite request
            return "[rewritten] " + messages[2]["content"]
        return "Echo: " + messages[-1]["content"]
    return reply


def write_answers(path: Path, n: int) -> list[str]:
    ids = [f"a{i:03d}" for i in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        for row_id in ids:
            f.write(json.dumps({"id": row_id, "instruction": DEFAULT_INSTRUCTION,
                                "input": f"patient {row_id}", "output": f"answer {row_id}",
                                "model": "first-model"}) + "\n")
    return ids


# --------------------------------------------------------------------------------------------
# Fault injection: every row exactly once.


def test_respond_with_every_retryable_fault_writes_each_row_exactly_once(tmp_path):
    ids = write_patients(tmp_path / "in.jsonl", 12)
    with FakeAPI(schedule=RETRYABLE_FAULTS * 3, slow_seconds=1.0) as api:
        code = synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--concurrency", "3",
                     *ENOUGH_RETRIES, *TIMEOUT_FAULT, "--no-safety-check")
        assert all(api.count(f) == 3 for f in RETRYABLE_FAULTS)  # every fault was served
    rows = read_rows(tmp_path / "out.jsonl")
    assert code == 0
    assert sorted(r["id"] for r in rows) == ids
    assert all(r["output"] == "Echo: " + r["input"] for r in rows)


def test_refine_with_every_retryable_fault_writes_each_row_exactly_once(tmp_path):
    ids = write_answers(tmp_path / "in.jsonl", 8)
    with FakeAPI(schedule=RETRYABLE_FAULTS * 3, slow_seconds=1.0,
                 reply=refine_reply([50, 70, 90, 95])) as api:
        code = synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--concurrency", "3",
                     *ENOUGH_RETRIES, *TIMEOUT_FAULT, "--threshold", "85",
                     "--no-safety-check")
        assert all(api.count(f) == 3 for f in RETRYABLE_FAULTS)
    rows = read_rows(tmp_path / "out.jsonl")
    assert code == 0
    assert sorted(r["id"] for r in rows) == ids
    assert all(r["scores"] == [50, 70, 90] for r in rows)


def test_rows_that_fail_every_retry_are_written_nowhere_and_a_rerun_makes_them(tmp_path):
    ids = write_patients(tmp_path / "in.jsonl", 3)
    args = ["respond", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--concurrency", "1", "--max-retries", "1", "--no-safety-check"]
    with FakeAPI(schedule=["500", "500"]) as api:  # the first row's two attempts
        assert synth(api, *args) == 1              # 1: some rows failed
        assert sorted(r["id"] for r in read_rows(tmp_path / "out.jsonl")) == ids[1:]
        assert synth(api, *args) == 0
    assert sorted(r["id"] for r in read_rows(tmp_path / "out.jsonl")) == ids


# --------------------------------------------------------------------------------------------
# Resuming.


def test_killed_respond_resumes_to_the_same_rows_as_an_uninterrupted_run(tmp_path):
    ids = write_patients(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with FakeAPI(delay=0.05) as api:
        cmd = [sys.executable, "-m", "synth", "respond", "--in", str(tmp_path / "in.jsonl"),
               "--out", str(out), "--base-url", api.base_url, "--model", "fake-model",
               "--concurrency", "2", "--no-safety-check"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = read_rows(out)
        assert 5 <= len(written) < len(ids), "the kill must land partway through the run"
        # A kill during a write leaves a torn last line; simulate one for a row not yet done.
        torn = next(i for i in ids if i not in {r["id"] for r in written})
        with open(out, "ab") as f:
            f.write(json.dumps({"id": torn, "input": "x", "output": "y"}).encode()[:20])

        api.delay = 0.0  # no need to be slow any more
        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=60)
        assert rerun.returncode == 0, rerun.stderr
        assert synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "uninterrupted.jsonl"), "--no-safety-check") == 0

    resumed = read_rows(out)  # every line parses: the torn one is gone
    reference = read_rows(tmp_path / "uninterrupted.jsonl")
    assert len(resumed) == len(ids)  # no duplicates
    assert ({r["id"]: r["output"] for r in resumed}
            == {r["id"]: r["output"] for r in reference})


def test_resume_sends_requests_only_for_ids_not_yet_in_the_output(tmp_path):
    write_patients(tmp_path / "in.jsonl", 6)
    args = ["respond", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--no-safety-check"]
    with FakeAPI() as api:
        assert synth(api, *args) == 0
        new_ids = write_patients(tmp_path / "in.jsonl", 4, start=6)
        before = len(api.requests)
        assert synth(api, *args) == 0
        asked = api.requests[before:]
    assert sorted(body["messages"][-1]["content"].split(":")[0] for body in asked) == \
        sorted(f"message number {i}" for i in new_ids)
    assert len(read_rows(tmp_path / "out.jsonl")) == 10


def test_torn_last_line_is_cut_off_on_open(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b", "inp')
    rows = AppendOnlyJsonl(str(path)).rows
    assert rows == [{"id": "a"}]
    assert path.read_bytes() == b'{"id": "a"}\n'


def test_whole_last_row_without_newline_is_kept_on_open(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    out = AppendOnlyJsonl(str(path))
    out.append({"id": "c"})
    out.close()
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n'


# --------------------------------------------------------------------------------------------
# Refusals: one line, exit status 2.


def test_rejected_api_key_prints_one_line_and_exits_2(tmp_path):
    write_patients(tmp_path / "in.jsonl", 3)
    with FakeAPI(api_key="the-right-key") as api:
        result = subprocess.run(
            [sys.executable, "-m", "synth", "respond", "--in", str(tmp_path / "in.jsonl"),
             "--out", str(tmp_path / "out.jsonl"), "--base-url", api.base_url,
             "--model", "fake-model", "--api-key", "a-wrong-key", "--no-safety-check"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "401" in result.stderr and "--api-key" in result.stderr


def test_unknown_model_prints_one_line_and_exits_2(tmp_path, capsys):
    write_answers(tmp_path / "in.jsonl", 3)
    with FakeAPI(reply=refine_reply([90])) as api:
        code = synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--evaluator-model", "no-such-model",
                     "--concurrency", "1", "--no-safety-check")
        assert len(api.requests) == 1  # a 404 is not retried
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "'no-such-model'" in err and "404" in err


def test_a_401_mid_run_stops_it_keeps_the_rows_written_and_a_rerun_finishes(tmp_path, capsys):
    ids = write_patients(tmp_path / "in.jsonl", 5)
    args = ["respond", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--concurrency", "1", "--no-safety-check"]
    with FakeAPI(schedule=["ok", "ok", "401"]) as api:
        assert synth(api, *args) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert [r["id"] for r in read_rows(tmp_path / "out.jsonl")] == ids[:2]
        assert synth(api, *args) == 0
    assert sorted(r["id"] for r in read_rows(tmp_path / "out.jsonl")) == ids


def test_missing_key_for_a_remote_server_prints_one_line_and_exits_2(tmp_path, capsys):
    write_patients(tmp_path / "in.jsonl", 1)
    code = main(["respond", "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"),
                 "--base-url", "https://api.example.invalid/v1", "--no-safety-check"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "OPENAI_API_KEY" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_local_server_needs_no_key(tmp_path):
    write_patients(tmp_path / "in.jsonl", 2)
    with FakeAPI() as api:
        assert synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--no-safety-check") == 0
    assert len(read_rows(tmp_path / "out.jsonl")) == 2


def test_input_line_that_is_not_json_is_named_in_one_line(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"id": "a", "input": "hi"}\n{"id": "b", "inp\n')
    code = main(["respond", "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "line 2" in err


def test_out_in_a_missing_folder_is_named_in_one_line(tmp_path, capsys):
    write_patients(tmp_path / "in.jsonl", 1)
    code = main(["respond", "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "nowhere" / "out.jsonl"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "nowhere" in err


# --------------------------------------------------------------------------------------------
# The refine loop.


def refine(tmp_path, api, *extra) -> list[dict]:
    write_answers(tmp_path / "in.jsonl", 2)
    assert synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "out.jsonl"), "--no-safety-check", *extra) == 0
    return read_rows(tmp_path / "out.jsonl")


def test_refine_stops_at_the_first_round_that_reaches_the_threshold(tmp_path):
    with FakeAPI(reply=refine_reply([40, 60, 80, 100])) as api:
        rows = refine(tmp_path, api, "--threshold", "75", "--max-rounds", "3")
        assert len(api.requests) == 2 * 5  # per row: 3 evaluations + 2 rewrites
    row = rows[0]
    assert row["scores"] == [40, 60, 80]
    assert row["round"] == 2
    assert row["output"] == "[rewritten] [rewritten] " + f"answer {row['id']}"
    assert row["model"] == "fake-model" and row["evaluator_model"] == "fake-model"


def test_refine_stops_after_max_rounds_and_keeps_every_round(tmp_path):
    with FakeAPI(reply=refine_reply([10, 20, 30, 40])) as api:
        rows = refine(tmp_path, api, "--threshold", "85", "--max-rounds", "2")
    row = rows[0]
    original = f"answer {row['id']}"
    assert row["scores"] == [10, 20, 30]
    assert [r["text"] for r in row["rounds"]] == [
        original, "[rewritten] " + original, "[rewritten] [rewritten] " + original]
    assert [r["score"] for r in row["rounds"]] == [10, 20, 30]
    assert row["rounds"][1]["feedback"] == "Empathy: warm\nGaps: round 1 gap\n" \
                                           "What to change: improve round 1"
    assert [r["model"] for r in row["rounds"]] == ["first-model", "fake-model", "fake-model"]


def test_refine_outputs_the_best_scoring_round(tmp_path):
    with FakeAPI(reply=refine_reply([70, 50, 30])) as api:
        rows = refine(tmp_path, api, "--threshold", "85", "--max-rounds", "2")
    row = rows[0]
    assert row["round"] == 0
    assert row["output"] == f"answer {row['id']}" and row["model"] == "first-model"


def test_evaluator_reply_without_a_score_is_asked_again(tmp_path):
    answers = iter(["This answer is lovely, no notes.", '{"feedback": "fine", "score": 90}'])
    with FakeAPI(reply=lambda messages, model: next(answers)) as api:
        write_answers(tmp_path / "in.jsonl", 1)
        assert synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--no-safety-check") == 0
        assert len(api.requests) == 2
    assert read_rows(tmp_path / "out.jsonl")[0]["scores"] == [90]


def test_rows_below_min_score_go_to_the_rejected_file(tmp_path):
    write_answers(tmp_path / "in.jsonl", 2)
    with FakeAPI(reply=refine_reply([10, 20])) as api:
        assert synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--max-rounds", "1",
                     "--min-score", "50", "--no-safety-check") == 0
    rejected = read_rows(tmp_path / "out.rejected.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert len(rejected) == 2 and "below --min-score" in rejected[0]["rejected_reason"]


@pytest.mark.parametrize("reply, score", [
    ('{"accuracy": "ok", "score": 72}', 72),
    ('Here you go:\n```json\n{"feedback": "x", "score": "8/10"}\n```', 80),
    ("Score: 72", 72),
    ("Empathy score: 8/10. Clarity score: 6/10. Overall score: **70**/100.", 70),
    ("I would give it a score of 8 out of 10.", 80),
    ("score (0-100): 64", 64),
    ('{"score": 120}', 100),
    ('{"score": -5}', 0),
    ('{"Overall_Score": "85%"}', 85),
    ('{"score": 77.5}', 77.5),
    ("Good answer overall, 64/100.", 64),
    ('{"score": true} but in words: score = 40', 40),
])
def test_evaluator_score_is_read_from_odd_replies(reply, score):
    assert parse_evaluation(reply).score == score


def test_evaluator_reply_with_no_score_is_a_bad_reply():
    with pytest.raises(BadReply):
        parse_evaluation("A warm and careful answer.")


# --------------------------------------------------------------------------------------------
# Patients: personas and near-duplicates.


def test_shingle_jaccard_matches_a_hand_count():
    a = shingles("I can't sleep at night.")   # i cant sleep | cant sleep at | sleep at night
    b = shingles("I cant sleep at all")       # i cant sleep | cant sleep at | sleep at all
    assert normalise("I can't SLEEP, at night!") == ["i", "cant", "sleep", "at", "night"]
    assert jaccard(a, b) == 2 / 4


def test_near_duplicate_index_agrees_with_pairwise_jaccard():
    texts = ["my dad died and I cannot sleep at night any more",
             "my dad died and I can not sleep at night any more",
             "exams start next week and I cannot focus on anything",
             "my dad died last year and I cannot sleep at night"]
    index = NearDuplicateIndex(threshold=0.5)
    for i, text in enumerate(texts):
        expected = [(j, jaccard(shingles(text), shingles(texts[j]))) for j in range(i)]
        expected = [(str(j), s) for j, s in expected if s >= 0.5]
        found = index.find(text)
        assert found == (max(expected, key=lambda e: e[1]) if expected else None)
        index.add(str(i), text)


def test_patients_moves_near_duplicates_to_the_rejected_file(tmp_path):
    messages = iter(["My dad died in March and since then I cannot sleep at night at all.",
                     "My dad died in March and since then I can not sleep at night at all!",
                     "Exams start next week and I freeze every time I open my notes.",
                     "I moved to a new city and I have not spoken to anyone in days."])
    with FakeAPI(reply=lambda m, model: next(messages)) as api:
        assert synth(api, "patients", "--n", "3", "--out", str(tmp_path / "p.jsonl"),
                     "--concurrency", "1") == 0
    kept = read_rows(tmp_path / "p.jsonl")
    rejected = read_rows(tmp_path / "p.rejected.jsonl")
    assert [r["id"] for r in kept] == ["patient-0-00000", "patient-0-00002", "patient-0-00003"]
    assert [r["id"] for r in rejected] == ["patient-0-00001"]
    assert rejected[0]["rejected_reason"].startswith("near-duplicate of patient-0-00000")


def test_patient_rows_carry_topic_persona_and_an_empty_output(tmp_path):
    with FakeAPI() as api:
        assert synth(api, "patients", "--n", "4", "--seed", "7",
                     "--out", str(tmp_path / "p.jsonl")) == 0
    for row in read_rows(tmp_path / "p.jsonl"):
        index = int(row["id"].rsplit("-", 1)[1])
        assert row["topic"] == topic_for(7, index)
        assert row["persona"]["situation"] == persona_for(7, index).situation
        assert row["output"] == "" and row["input"].startswith("Echo: Write the message")


def test_personas_and_topics_are_fixed_by_seed_and_index():
    assert len(TOPICS) >= 25
    assert persona_for(3, 11) == persona_for(3, 11)
    assert [persona_for(3, i) for i in range(20)] != [persona_for(4, i) for i in range(20)]
    assert sorted(topic_for(5, i) for i in range(len(TOPICS))) == sorted(TOPICS)


# --------------------------------------------------------------------------------------------
# Dry run, summary, schema.


@pytest.mark.parametrize("stage", ["patients", "respond", "refine"])
def test_dry_run_sends_no_request_and_writes_nothing(tmp_path, capsys, stage):
    write_answers(tmp_path / "in.jsonl", 3)
    args = ["--n", "3"] if stage == "patients" else ["--in", str(tmp_path / "in.jsonl")]
    with FakeAPI() as api:
        assert synth(api, stage, *args, "--out", str(tmp_path / "out.jsonl"), "--dry-run") == 0
        assert api.requests == []
    shown = capsys.readouterr().out
    assert not (tmp_path / "out.jsonl").exists()
    assert "dry run: 3 prompts shown, nothing sent" in shown
    if stage != "patients":
        assert "patient a002" in shown


def test_summary_reports_the_tokens_the_server_counted(tmp_path, capsys):
    write_patients(tmp_path / "in.jsonl", 5)
    with FakeAPI(schedule=["429", "500"]) as api:
        assert synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--no-safety-check") == 0
    out = capsys.readouterr().out
    assert f"tokens: {api.usage_sent[0]} prompt + {api.usage_sent[1]} completion" in out
    assert "rows written: 5" in out and "estimated cost: $0.0000 (local server)" in out


def test_cost_uses_the_price_table_and_the_overrides():
    usage = UsageMeter()
    usage.add("gpt-4o-mini-2024-07-18", 2_000_000, 1_000_000)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert usage.cost(local=False) == (pytest.approx(2 * 0.15 + 1 * 0.60), [])
    assert usage.cost(local=False, price_in=1.0, price_out=2.0) == (pytest.approx(4.0), [])
    assert usage.cost(local=True) == (0.0, [])


def test_respond_rows_are_training_rows(tmp_path):
    write_patients(tmp_path / "in.jsonl", 4)
    with FakeAPI() as api:
        assert synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--no-safety-check") == 0
    for row in read_rows(tmp_path / "out.jsonl"):
        assert all(isinstance(row[k], str) and row[k].strip()
                   for k in ("instruction", "input", "output"))
        assert row["instruction"] == DEFAULT_INSTRUCTION
        assert row["round"] == 0 and row["scores"] == [] and len(row["rounds"]) == 1
        assert set(row["created_at"]) == {"respond"}


def test_respond_rows_load_with_the_project_data_loader(tmp_path):
    rows_module = pytest.importorskip("data.rows", reason="data.rows is not importable yet")
    write_patients(tmp_path / "in.jsonl", 4)
    with FakeAPI() as api:
        assert synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--no-safety-check") == 0
    rows, stats = rows_module.load_rows(str(tmp_path / "out.jsonl"))
    assert stats.kept == 4 and stats.skipped == 0
    assert rows[0].output == "Echo: " + rows[0].input


# --------------------------------------------------------------------------------------------
# Safety gate.


def fake_safety(monkeypatch):
    """A stand-in `safety` package that flags answers containing the word UNSAFE (the details
    dict has the shape safety.row_is_safe returns)."""
    def row_is_safe(instruction, text_in, text_out):
        safe = "UNSAFE" not in text_out
        return safe, {"safe": safe, "reasons": [] if safe else ["test_rule"], "matched": "UNSAFE"}

    module = types.ModuleType("safety")
    module.row_is_safe = row_is_safe
    monkeypatch.setitem(sys.modules, "safety", module)


def run_with_one_unsafe_row(tmp_path, *extra) -> tuple[list[dict], Path]:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "input": text}) + "\n" for i, text in
                            [("ok", "I feel low."), ("bad", "UNSAFE please")]))
    with FakeAPI() as api:
        assert synth(api, "respond", "--in", str(path), "--out", str(tmp_path / "out.jsonl"),
                     *extra) == 0
    return read_rows(tmp_path / "out.jsonl"), tmp_path / "out.rejected.jsonl"


def test_unsafe_rows_go_to_the_rejected_file_with_the_reason(tmp_path, monkeypatch):
    fake_safety(monkeypatch)
    kept, rejected_file = run_with_one_unsafe_row(tmp_path)
    rejected = read_rows(rejected_file)
    assert [r["id"] for r in kept] == ["ok"] and "safety" not in kept[0]
    assert [r["id"] for r in rejected] == ["bad"]
    assert rejected[0]["rejected_reason"] == "unsafe: test_rule"


def test_keep_unsafe_keeps_the_row_with_a_safety_field(tmp_path, monkeypatch):
    fake_safety(monkeypatch)
    kept, rejected_file = run_with_one_unsafe_row(tmp_path, "--keep-unsafe")
    assert sorted(r["id"] for r in kept) == ["bad", "ok"]
    assert next(r for r in kept if r["id"] == "bad")["safety"]["matched"] == "UNSAFE"
    assert not rejected_file.exists()


def test_the_project_safety_package_rejects_an_answer_that_ignores_a_crisis(tmp_path):
    try:
        from safety import row_is_safe  # noqa: F401 - the API this pipeline calls
    except ImportError:
        pytest.skip("the safety package (safety.row_is_safe) is not importable yet")
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"id": "calm", "input": "I have trouble sleeping before exams."})
                    + "\n" + json.dumps({"id": "crisis", "input": "I want to kill myself "
                                          "tonight, I have the pills ready."}) + "\n")
    with FakeAPI(reply=lambda m, model: "That sounds hard. A regular bedtime and a short "
                 "wind-down routine can help.") as api:
        assert synth(api, "respond", "--in", str(path), "--out", str(tmp_path / "out.jsonl")) == 0
    rejected = read_rows(tmp_path / "out.rejected.jsonl")
    assert [r["id"] for r in read_rows(tmp_path / "out.jsonl")] == ["calm"]
    assert [r["id"] for r in rejected] == ["crisis"]
    assert rejected[0]["rejected_reason"].startswith("unsafe: ")
    assert rejected[0]["safety"]["safe"] is False


# --------------------------------------------------------------------------------------------
# The retry policy itself.


def test_backoff_doubles_from_the_base_and_is_capped():
    policy = RetryPolicy(max_retries=9, base_delay=1.0, max_delay=8.0)
    no_jitter = [backoff_delay(a, policy, rand=lambda: 0.0) for a in range(5)]
    full_jitter = [backoff_delay(a, policy, rand=lambda: 1.0) for a in range(5)]
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 4.0]     # half the delay is fixed
    assert full_jitter == [1.0, 2.0, 4.0, 8.0, 8.0]   # the other half is random


def test_retryable_errors_are_retried_until_max_retries_then_raised():
    calls = []

    def always_dropped():
        calls.append(1)
        raise BadReply("empty reply")

    with pytest.raises(BadReply):
        call_with_retries(always_dropped, RetryPolicy(3, 0.0, 0.0), what="t", log=lambda m: None)
    assert len(calls) == 4


def test_an_error_that_is_not_retryable_is_raised_at_once():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("a bug, not a flaky server")

    with pytest.raises(ValueError):
        call_with_retries(broken, RetryPolicy(3, 0.0, 0.0), what="t", log=lambda m: None)
    assert len(calls) == 1
