"""The LLM judge against a scripted OpenAI-compatible server on 127.0.0.1 (real sockets).

Every failure mode must be counted with a readable message, never raised.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evaluation.judge import CRITERIA, Judge, JudgeScore, parse_judge_reply, summarize

GOOD_REPLY = """Here is my assessment.
```json
{"empathy": 4, "helpfulness": 3, "clarity": 5, "safety": 5, "appropriateness": 4,
 "rationale": "Warm and clear, a little generic."}
```"""


class ScriptedServer:
    """Answers POST /v1/chat/completions with the next scripted (status, body) pair."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                owner.requests.append((self.path, json.loads(self.rfile.read(length))))
                status, body = owner.script[min(len(owner.requests), len(owner.script)) - 1]
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if status == 200 and
                                 not isinstance(body, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "1")       # keep the client's retries quick
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str) -> dict:
    return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": "judge-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"          # nothing listens there any more


def test_a_good_json_reply_is_parsed_into_scores(serve):
    server = serve((200, completion(GOOD_REPLY)))
    judge = Judge(server.url, "judge-model", max_retries=0)
    score = judge.score("I can't sleep.", "That sounds hard; what keeps you up?")
    assert score == JudgeScore(empathy=4, helpfulness=3, clarity=5, safety=5, appropriateness=4,
                               rationale="Warm and clear, a little generic.")
    assert judge.summary().failures == 0


def test_the_request_carries_rubric_question_answer_and_reference(serve):
    server = serve((200, completion(GOOD_REPLY)))
    judge = Judge(server.url, "judge-model", max_retries=0)
    judge.score("QUESTION-TEXT", "ANSWER-TEXT", reference="REFERENCE-TEXT")
    path, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "judge-model"
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    assert all(c in system for c in CRITERIA)
    assert "QUESTION-TEXT" in user and "ANSWER-TEXT" in user and "REFERENCE-TEXT" in user


def test_garbage_text_is_counted_as_a_failure_with_the_reason(serve):
    server = serve((200, completion("I would rather not say.")))
    judge = Judge(server.url, "judge-model", max_retries=0)
    assert judge.score("q", "a") is None
    summary = judge.summary()
    assert (summary.scored, summary.failures) == (0, 1)
    assert "no score for empathy" in summary.first_error


def test_http_500_is_retried_then_counted(serve):
    server = serve((500, "upstream exploded"))
    judge = Judge(server.url, "judge-model", max_retries=1)
    assert judge.score("q", "a") is None
    assert len(server.requests) == 2                 # the first try and one retry
    assert "answered HTTP 500: upstream exploded" in judge.summary().first_error


def test_a_non_json_http_body_is_counted_not_raised(serve):
    server = serve((200, "<html>gateway page</html>"))
    judge = Judge(server.url, "judge-model", max_retries=0)
    assert judge.score("q", "a") is None
    summary = judge.summary()
    assert summary.failures == 1
    assert "did not answer with a chat completion" in summary.first_error


def test_an_endpoint_that_is_down_is_counted_with_its_address():
    url = closed_port_url()
    judge = Judge(url, "judge-model", max_retries=0, timeout=5)
    assert judge.score("q", "a") is None
    summary = judge.summary()
    assert summary.failures == 1
    assert summary.first_error.startswith(f"cannot reach the judge at {url}")


def test_summary_averages_the_scored_rows_and_keeps_the_first_error(serve):
    server = serve((200, completion(GOOD_REPLY)), (200, completion("garbage")),
                   (200, completion(GOOD_REPLY.replace('"empathy": 4', '"empathy": 2'))))
    judge = Judge(server.url, "judge-model", max_retries=0)
    for _ in range(3):
        judge.score("q", "a")
    summary = judge.summary()
    assert (summary.attempted, summary.scored, summary.failures) == (3, 2, 1)
    assert summary.means["empathy"] == pytest.approx(3.0)
    assert summary.means["overall"] == pytest.approx((4.2 + 3.8) / 2)
    line = summary.line()
    assert line.startswith("judge: 2/3 scored") and "1 failed (first: " in line


def test_summarize_with_no_scores_has_no_means():
    summary = summarize([None, None], "boom")
    assert summary.means == {} and summary.failures == 2 and summary.first_error == "boom"


def test_parse_reads_criterion_lines_and_clamps_to_one_to_five():
    text = "**Empathy**: 7\nHelpfulness: 4/5\nClarity = 3\nSafety: 0\nAppropriateness: 4.5"
    score = parse_judge_reply(text)
    assert (score.empathy, score.helpfulness, score.clarity, score.safety,
            score.appropriateness) == (5.0, 4.0, 3.0, 1.0, 4.5)


def test_parse_reads_nested_objects_and_string_values():
    text = '{"scores": {"Empathy": "5", "helpfulness": {"score": 2}, "clarity": 3, ' \
           '"safety": 4, "appropriateness": 1}, "rationale": "short"}'
    score = parse_judge_reply(text)
    assert (score.empathy, score.helpfulness, score.appropriateness) == (5.0, 2.0, 1.0)
    assert score.rationale == "short"


def test_parse_names_the_missing_criteria():
    with pytest.raises(ValueError, match="safety, appropriateness"):
        parse_judge_reply('{"empathy": 3, "helpfulness": 3, "clarity": 3}')
