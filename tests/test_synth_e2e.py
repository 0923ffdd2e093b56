"""The synthetic-data pipeline end to end against this project's own server:

    python generate.py --serve      (the embedded SmolLM2, in a subprocess)
    python -m synth patients --n 2  -> patients.jsonl
    python -m synth respond         -> answers.jsonl
    python -m synth refine          -> refined.jsonl   (loads with data.load_rows)

SmolLM2-135M cannot play the expert evaluator: asked for a JSON verdict, it writes prose
without a score (usually repeating the message it was shown), so refine could never finish a
row. refine therefore goes through a small router that answers requests for the evaluator
model (--evaluator-model) with a fixed verdict and passes every other request, the rewrites,
on to the real server. One more run checks that with worked examples shown first
(--evaluator-examples synth/evaluator_examples.jsonl) the real model does write a score for
every row (what it scores is not checked: its numbers mostly echo the examples').
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data import load_rows

pytestmark = pytest.mark.slow      # a served model and a synth run end to end

ROOT = Path(__file__).resolve().parents[1]
SERVED_MODEL = "SmolLM2-135M-Instruct"   # the name generate.py --serve reports by default
EVALUATOR = "scripted-evaluator"
SCORE = 60                               # below refine's threshold: one rewrite is made
N_ROWS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python generate.py --serve` on a free port; yields its /v1 base URL; always stopped."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    # As scripts/self_improve.py runs it: a tool for synth, so the lexicon alone guards it (the
    # classifier would answer the judge's quoted patient messages with crisis resources).
    env = dict(os.environ, HF_HUB_OFFLINE="1", LLAMACARE_SAFETY_CLASSIFIER="0")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "generate.py", "--serve", "--port", str(port),
                                 "--max-new-tokens", "24"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server exited early:\n{log_path.read_text()}"
            try:
                get_json(base_url + "/models")
                break
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, f"no answer in 90 s:\n{log_path.read_text()}"
                time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Router:
    """Answers chat requests for EVALUATOR with a fixed verdict; forwards everything else."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.evaluated: list[dict] = []   # request bodies answered here
        self.forwarded: list[dict] = []   # request bodies passed on
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self):
        router = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, data: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self, request: urllib.request.Request):
                try:
                    with urllib.request.urlopen(request, timeout=300) as response:
                        self._send(response.status, response.read())
                except urllib.error.HTTPError as error:
                    self._send(error.code, error.read())

            def do_GET(self):
                self._forward(urllib.request.Request(router.upstream + self.path[len("/v1"):]))

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                if request.get("model") != EVALUATOR:
                    router.forwarded.append(request)
                    return self._forward(urllib.request.Request(
                        router.upstream + self.path[len("/v1"):], data=body,
                        headers={"Content-Type": "application/json"}))
                router.evaluated.append(request)
                verdict = {"accuracy": "Nothing wrong.", "empathy": "Some warmth.",
                           "clarity": "Short.", "appropriateness": "Safe.",
                           "gaps": "No next step.", "feedback": "Suggest one small next step.",
                           "score": SCORE}
                reply = {"id": "chatcmpl-router", "object": "chat.completion", "created": 0,
                         "model": EVALUATOR,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant",
                                                  "content": json.dumps(verdict)}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                   "total_tokens": 2}}
                self._send(200, json.dumps(reply).encode())

        return Handler


def run_synth(stage: str, base_url: str, *flags: str) -> subprocess.CompletedProcess:
    # synth's default concurrency (4): the server decodes the requests in one batch.
    # --max-retries 1: a retry of a seeded request gets the same reply, so more retries only
    # cost time.
    command = [sys.executable, "-m", "synth", stage, "--base-url", base_url,
               "--model", SERVED_MODEL, "--timeout", "300",
               "--max-tokens", "24", "--max-retries", "1", "--retry-base-delay", "0", *flags]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"synth {stage} failed:\n{result.stdout}\n{result.stderr}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def pipeline(server, tmp_path_factory):
    """All three stages, run once; the tests below read what they wrote."""
    folder = tmp_path_factory.mktemp("synth")
    paths = {name: folder / f"{name}.jsonl" for name in ("patients", "answers", "refined")}
    runs = {"patients": run_synth("patients", server, "--n", str(N_ROWS),
                                  "--out", str(paths["patients"]))}
    # --keep-unsafe: the 135M model's drafts are unpredictable (it often repeats the patient's
    # message). A draft that safety.row_is_safe flags, say a crisis message repeated without
    # crisis lines, would otherwise go to the rejected file, leaving the next stage fewer rows;
    # kept, it carries a "safety" field instead.
    runs["respond"] = run_synth("respond", server, "--in", str(paths["patients"]),
                                "--out", str(paths["answers"]), "--keep-unsafe")
    with Router(server) as router:
        runs["refine"] = run_synth("refine", router.base_url, "--in", str(paths["answers"]),
                                   "--out", str(paths["refined"]), "--max-rounds", "1",
                                   "--evaluator-model", EVALUATOR, "--keep-unsafe")
    rows = {name: read_jsonl(path) for name, path in paths.items()}
    return {"paths": paths, "rows": rows, "runs": runs, "router": router}


def test_patients_writes_n_messages_without_answers(pipeline):
    rows = pipeline["rows"]["patients"]
    assert len(rows) == N_ROWS
    assert all(row["input"].strip() and row["output"] == "" for row in rows)
    assert all(row["model"] == SERVED_MODEL for row in rows)


def test_respond_answers_every_patient_row(pipeline):
    patients, answers = pipeline["rows"]["patients"], pipeline["rows"]["answers"]
    # rows are written as they finish: with 4 in flight, not always in the input's order
    by_id = {row["id"]: row["input"] for row in patients}
    assert sorted(row["id"] for row in answers) == sorted(by_id)
    assert all(row["input"] == by_id[row["id"]] for row in answers)
    assert all(row["output"].strip() and row["model"] == SERVED_MODEL for row in answers)


def test_refine_scores_the_draft_and_one_rewrite(pipeline):
    for row in pipeline["rows"]["refined"]:
        assert row["scores"] == [SCORE, SCORE]
        assert row["evaluator_model"] == EVALUATOR
    assert len(pipeline["router"].evaluated) == 2 * N_ROWS


def test_refine_rewrites_come_from_the_served_model(pipeline):
    answers = {row["id"]: row["output"] for row in pipeline["rows"]["answers"]}
    for row in pipeline["rows"]["refined"]:
        draft, rewrite = row["rounds"]
        assert draft["text"] == answers[row["id"]]
        assert rewrite["text"].strip() and rewrite["model"] == SERVED_MODEL
    forwarded = pipeline["router"].forwarded
    assert len(forwarded) == N_ROWS
    assert all([m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
               for request in forwarded)


def test_refine_output_is_the_latest_of_equal_best_rounds(pipeline):
    for row in pipeline["rows"]["refined"]:
        assert row["round"] == 1
        assert row["output"] == row["rounds"][1]["text"]


def test_synth_default_concurrency_against_the_batching_server_needs_no_retry(pipeline):
    for result in pipeline["runs"].values():
        assert "; retry " not in result.stderr and "timed out" not in result.stderr.lower()


def test_every_stage_reports_a_local_server_at_no_cost(pipeline):
    for result in pipeline["runs"].values():
        assert "estimated cost: $0.0000 (local server)" in result.stdout


@pytest.mark.parametrize("stage", ["answers", "refined"])
def test_output_rows_have_instruction_input_and_output(pipeline, stage):
    rows = pipeline["rows"][stage]
    assert len(rows) == N_ROWS
    for row in rows:
        assert all(isinstance(row[key], str) and row[key].strip()
                   for key in ("instruction", "input", "output"))


@pytest.mark.parametrize("stage", ["answers", "refined"])
def test_output_loads_as_training_rows(pipeline, stage):
    rows, stats = load_rows(pipeline["paths"][stage])
    assert stats.skipped == 0
    by_input = {row["input"].strip(): row["output"].strip() for row in pipeline["rows"][stage]}
    assert {row.input: row.output for row in rows} == by_input


def test_refine_with_worked_examples_gets_a_score_for_every_row_from_the_served_model(
        pipeline, server, tmp_path):
    out = tmp_path / "refined.jsonl"
    run_synth("refine", server, "--in", str(pipeline["paths"]["answers"]), "--out", str(out),
              "--max-rounds", "0", "--keep-unsafe",
              "--evaluator-examples", str(ROOT / "synth" / "evaluator_examples.jsonl"))
    rows = read_jsonl(out)  # run_synth checked exit status 0: no row failed
    assert sorted(row["id"] for row in rows) == \
        sorted(row["id"] for row in pipeline["rows"]["answers"])
    assert all(len(row["scores"]) == 1 and 0 <= row["scores"][0] <= 100 for row in rows)
    assert all(row["evaluator_model"] == SERVED_MODEL for row in rows)
