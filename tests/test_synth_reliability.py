"""synth against a dead or failing server: it stops early, spends a bounded number of requests,
keeps what it wrote, and a rerun finishes. Also the evaluator's worked examples
(refine --evaluator-examples).

Every server is a FakeAPI on 127.0.0.1 (tests/fakeapi.py); nothing here measures time: the
deadline tests use --deadline 0 or a fake clock.
"""

import json
import socket
from pathlib import Path

import pytest

from synth.cli import main
from synth.patients import candidate_id
from synth.personas import persona_for, topic_for
from synth.prompts import EVALUATOR_SYSTEM, patient_messages
from tests.fakeapi import FakeAPI
from tests.test_synth import (FAST, read_rows, refine_reply, synth, write_answers,
                              write_patients)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_real_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def connects(monkeypatch) -> list:
    """Every TCP connect the process makes, as (host, port): it counts the openai client's own
    retries too, which a count of synth's attempts would miss."""
    made = []
    real_connect = socket.socket.connect

    def connect(self, address):
        made.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return made


# --------------------------------------------------------------------------------------------
# Nothing listening: stop at once.


def test_connection_refused_stops_at_once_saying_nothing_listening(tmp_path, capsys, connects):
    write_patients(tmp_path / "in.jsonl", 3)
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v1"
    code = main(["respond", "--in", str(tmp_path / "in.jsonl"), "--out",
                 str(tmp_path / "out.jsonl"), "--base-url", url, *FAST, "--max-retries", "6",
                 "--concurrency", "1", "--no-safety-check"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert f"nothing listening at {url}" in err
    assert [a for a in connects if a[1] == port] == [("127.0.0.1", port)]  # 1 attempt, 0 retries
    assert not (tmp_path / "out.jsonl").exists()


def test_connection_refused_with_many_workers_tries_each_at_most_once(tmp_path, capsys,
                                                                       connects):
    write_patients(tmp_path / "in.jsonl", 20)
    port = closed_port()
    code = main(["respond", "--in", str(tmp_path / "in.jsonl"), "--out",
                 str(tmp_path / "out.jsonl"), "--base-url", f"http://127.0.0.1:{port}/v1",
                 *FAST, "--concurrency", "4", "--no-safety-check"])
    assert code == 2 and "nothing listening" in capsys.readouterr().err
    assert 1 <= len([a for a in connects if a[1] == port]) <= 4  # no row's request retried


# --------------------------------------------------------------------------------------------
# The circuit breaker.


def test_a_server_that_always_fails_is_given_up_after_k_failures_in_a_row(tmp_path, capsys):
    write_patients(tmp_path / "in.jsonl", 20)
    k, concurrency = 4, 3
    with FakeAPI(fault_for=lambda body: "500") as api:
        code = synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--max-retries", "6",
                     "--concurrency", str(concurrency), "--max-consecutive-failures", str(k),
                     "--no-safety-check")
        asked = len(api.requests)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "4 failed requests in a row" in err[-1] and "HTTP 500" in err[-1]
    assert "rerun" in err[-1]
    # K failures trip it; only the requests already in flight on the other workers follow.
    assert k <= asked <= k + concurrency - 1  # was 20 rows x 7 attempts = 140


def test_a_success_resets_the_count_of_failures_in_a_row(tmp_path):
    write_patients(tmp_path / "in.jsonl", 3)
    # 3 failures, a success, 3 failures, ...: never 4 in a row.
    with FakeAPI(schedule=["500"] * 3 + ["ok"] + ["500"] * 3 + ["ok"] + ["500"] * 3) as api:
        code = synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--max-retries", "5",
                     "--concurrency", "1", "--max-consecutive-failures", "4",
                     "--no-safety-check")
    assert code == 0
    assert len(read_rows(tmp_path / "out.jsonl")) == 3


def test_rows_written_before_a_circuit_break_survive_and_a_rerun_finishes(tmp_path):
    ids = write_patients(tmp_path / "in.jsonl", 5)
    args = ["respond", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--concurrency", "1", "--max-retries", "5", "--max-consecutive-failures", "3",
            "--no-safety-check"]
    with FakeAPI(schedule=["ok", "ok", "500", "500", "500"]) as api:
        assert synth(api, *args) == 2
        assert [r["id"] for r in read_rows(tmp_path / "out.jsonl")] == ids[:2]
        assert synth(api, *args) == 0  # the schedule is spent: the server answers again
    assert sorted(r["id"] for r in read_rows(tmp_path / "out.jsonl")) == ids  # each once


# --------------------------------------------------------------------------------------------
# A failed row counts against its own budget.


def test_failed_patient_candidates_count_against_n_and_are_not_replaced(tmp_path, capsys):
    def prompt(index: int) -> str:
        return patient_messages(topic_for(0, index), persona_for(0, index))[-1]["content"]

    failing = {prompt(1), prompt(3)}  # candidates 1 and 3 fail every time they are asked
    n, max_retries = 4, 1
    out = tmp_path / "p.jsonl"
    with FakeAPI(fault_for=lambda body: "500" if body["messages"][-1]["content"] in failing
                 else None) as api:
        code = synth(api, "patients", "--n", str(n), "--out", str(out), "--concurrency", "1",
                     "--max-retries", str(max_retries))
        tried = {body["messages"][-1]["content"] for body in api.requests}
        assert code == 1  # rows are missing
        assert tried == {prompt(i) for i in range(n)}  # candidates 0..3, none beyond N
        assert len(api.requests) <= n * (max_retries + 1)
        assert "failed (rerun to retry): 2" in capsys.readouterr().out
        assert [r["id"] for r in read_rows(out)] == [candidate_id(0, 0), candidate_id(0, 2)]

        api.fault_for = None  # the server recovers: a rerun makes the failed candidates
        assert synth(api, "patients", "--n", str(n), "--out", str(out)) == 0
    assert sorted(r["id"] for r in read_rows(out)) == [candidate_id(0, i) for i in range(n)]


# --------------------------------------------------------------------------------------------
# --deadline.


def test_a_deadline_already_passed_starts_no_request(tmp_path, capsys):
    write_patients(tmp_path / "in.jsonl", 3)
    with FakeAPI() as api:
        code = synth(api, "respond", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--deadline", "0",
                     "--no-safety-check")
        assert api.requests == []
    assert code == 1  # rows are missing; a rerun does them
    assert "not done when --deadline passed (rerun to continue): 3" in capsys.readouterr().out
    assert not (tmp_path / "out.jsonl").exists()


def test_no_request_starts_after_the_deadline_and_a_rerun_finishes(tmp_path, monkeypatch,
                                                                   capsys):
    now = [0.0]
    monkeypatch.setattr("synth.runner.clock", lambda: now[0])
    scripted = refine_reply([10, 20, 30])

    def reply(messages, model):
        if len(api.requests) == 2:  # the first row's first rewrite: the deadline passes
            now[0] = 100.0
        return scripted(messages, model)

    ids = write_answers(tmp_path / "in.jsonl", 3)
    args = ["refine", "--in", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
            "--concurrency", "1", "--threshold", "85", "--max-rounds", "2", "--no-safety-check"]
    with FakeAPI(reply=reply) as api:
        assert synth(api, *args, "--deadline", "50") == 1
        # evaluate round 0, rewrite 1, then nothing: the row's next evaluation is not started
        assert len(api.requests) == 2
        assert "not done when --deadline passed (rerun to continue): 3" in \
            capsys.readouterr().out
        assert not (tmp_path / "out.jsonl").exists()
        assert synth(api, *args) == 0
    rows = read_rows(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == ids
    assert all(r["scores"] == [10, 20, 30] for r in rows)


# --------------------------------------------------------------------------------------------
# refine --evaluator-examples.


EXAMPLES = [
    {"patient": "I cannot sleep since the move.", "answer": "Sleep more.",
     "verdict": {"score": 20, "feedback": "Acknowledge the move first."}},
    {"patient": "Exams scare me.", "answer": "That sounds hard; small steps help.",
     "verdict": "Score: 80. Warm and concrete."},
]


def write_examples(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_evaluator_examples_are_sent_as_turns_before_the_real_request(tmp_path):
    examples = write_examples(tmp_path / "examples.jsonl", EXAMPLES)
    write_answers(tmp_path / "in.jsonl", 1)
    with FakeAPI(reply=refine_reply([50, 90])) as api:
        assert synth(api, "refine", "--in", str(tmp_path / "in.jsonl"),
                     "--out", str(tmp_path / "out.jsonl"), "--threshold", "85",
                     "--evaluator-examples", examples, "--no-safety-check") == 0
        evaluate, rewrite, evaluate_again = (body["messages"] for body in api.requests)
    assert [m["role"] for m in evaluate] == ["system", "user", "assistant", "user", "assistant",
                                             "user"]
    assert evaluate[0]["content"] == EVALUATOR_SYSTEM
    assert evaluate[1]["content"] == \
        "Patient's message:\nI cannot sleep since the move.\n\nAssistant's answer:\nSleep more."
    assert json.loads(evaluate[2]["content"]) == EXAMPLES[0]["verdict"]
    assert evaluate[4]["content"] == "Score: 80. Warm and concrete."
    assert evaluate[5]["content"] == "Patient's message:\npatient a000\n\n" \
                                     "Assistant's answer:\nanswer a000"
    assert evaluate_again[1:5] == evaluate[1:5]        # every evaluation gets them
    assert len(rewrite) == 4 and rewrite[0]["content"] != EVALUATOR_SYSTEM  # rewrites do not
    assert read_rows(tmp_path / "out.jsonl")[0]["scores"] == [50, 90]


GOOD = json.dumps(EXAMPLES[0])


@pytest.mark.parametrize("lines, line_no, says", [
    ([GOOD, '{"patient": "x", "answer'], 2, "not valid JSON"),
    (['["patient", "answer", "verdict"]'], 1, "not an object"),
    ([json.dumps({"patient": "x", "answer": "y"})], 1, "lacks verdict"),
    ([json.dumps({**EXAMPLES[0], "score": 3})], 1, "unknown keys score"),
    ([GOOD, "", json.dumps({**EXAMPLES[0], "patient": " "})], 3, "'patient' must be non-empty"),
    ([json.dumps({**EXAMPLES[0], "verdict": "Lovely answer."})], 1, "holds no score"),
    ([json.dumps({**EXAMPLES[0], "verdict": 70})], 1, "'verdict' must be"),
])
def test_a_bad_evaluator_example_is_named_by_file_and_line(tmp_path, capsys, lines, line_no,
                                                            says):
    examples = write_examples(tmp_path / "ex.jsonl", lines)
    write_answers(tmp_path / "in.jsonl", 1)
    code = main(["refine", "--in", str(tmp_path / "in.jsonl"), "--out",
                 str(tmp_path / "out.jsonl"), "--evaluator-examples", examples, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"{examples}:{line_no}" in err and says in err


@pytest.mark.parametrize("make, says", [
    (lambda path: None, "does not exist"),
    (lambda path: path.write_text("\n\n"), "holds no examples"),
])
def test_a_missing_or_empty_examples_file_is_one_line(tmp_path, capsys, make, says):
    path = tmp_path / "ex.jsonl"
    make(path)
    write_answers(tmp_path / "in.jsonl", 1)
    code = main(["refine", "--in", str(tmp_path / "in.jsonl"), "--out",
                 str(tmp_path / "out.jsonl"), "--evaluator-examples", str(path), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and says in err


def test_the_shipped_evaluator_examples_load():
    from synth.examples import read_examples
    examples = read_examples(str(REPO / "synth" / "evaluator_examples.jsonl"))
    assert [json.loads(e.verdict)["score"] for e in examples] == [30, 90]


def test_a_worker_cancelled_by_another_workers_stop_reports_that_workers_reason(tmp_path):
    # The worker that trips the breaker (or meets a refused connection) stops the others; one
    # of them may report its cancellation first. The run must end with the real reason.
    from synth.errors import SynthError
    from synth.retry import Cancelled
    from synth.runner import Settings, Summary, accept_all, open_outputs, run_jobs

    def work(job, client):
        client.halt(SynthError("nothing listening at the test URL"))  # elsewhere, say
        raise Cancelled()  # what this worker itself sees

    out, rejected, _ = open_outputs(str(tmp_path / "out.jsonl"))
    settings = Settings(out=str(tmp_path / "out.jsonl"), base_url="http://127.0.0.1:9/v1",
                        concurrency=1)
    with pytest.raises(SynthError, match="nothing listening"):
        run_jobs(settings, "test", iter([{"id": "a"}, {"id": "b"}]), work=work,
                 judge=accept_all, out=out, rejected=rejected, summary=Summary(), total=2)
