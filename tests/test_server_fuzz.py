"""A bounded fuzz of server.py: 2,000 mutated requests from a seeded generator, each sent on a
fresh raw socket to 127.0.0.1. Every one must get an HTTP answer: a 200, or a 4xx/5xx whose body
is OpenAI's error JSON, and never a 500 (a 500 is a bug the catch-all hid). Afterwards the
server still answers, and its log holds no traceback and no error line.

Mutations: random JSON values for each field, wrong types, deleted fields, huge numbers,
NaN/Infinity literals, unicode (lone surrogates too), truncated bodies, bad headers, bad methods,
paths and HTTP versions, bad Content-Length, raw garbage bytes. Most are refused by validation;
most valid ones are crisis messages, answered by the safety layer without the model, and the
ones that reach the model are capped at 2 tokens, on a prompt of a few tokens.
"""

import json
import random

import pytest

from model.generation import SamplingConfig
from tests.server_kit import CHAT, exchange, make_assistant, request_bytes, running_server

CASES = 2000
SEED = 20260411
MAX_BODY = 64 * 1024
FIELDS = ["messages", "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
          "seed", "n", "stream", "stream_options"]
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
WEIRD_TEXT = ["", " ", "\u0000", "\ud800", "\udfff", "e\u0301", "\u202e", "😀" * 3, "\uffff",
              "<|im_start|>", "\r\n\r\n", "%00", "\\", '"', "null", "NaN", "\u4f60\u597d"]
CRISIS = "I want to kill myself tonight. I have the pills ready."
NUMBER_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * 400, "-0", "1e-400",
                   "2", "0.5", "1", "0"]


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(WEIRD_TEXT)
    return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000),
                                   rng.randrange(0x1F300, 0x1F650)])) for _ in range(rng.randrange(12)))


def random_value(rng: random.Random, depth: int = 0):
    """Any JSON value, small, with the numbers people get wrong."""
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 3, 10**30, -(10**30), 2**63, 2**64, 8193])
    if kind == 3:
        return rng.choice([0.0, 0.5, 1.0, 2.0000001, -0.0, 1e-300, 1e308, -1e308, 3.14])
    if kind in (4, 5):
        return random_text(rng)
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["role", "content", "type", "text", random_text(rng)]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def random_message(rng: random.Random):
    message = {"role": rng.choice(["user", "system", "assistant", "developer", "tool", "User", 1, [], None]),
               "content": rng.choice(["hi", random_text(rng), None, 5, [], [{"type": "text", "text": "hi"}],
                                      [{"type": "text", "text": random_value(rng)}],
                                      [{"type": random_text(rng)}], [random_value(rng)]])}
    for key in list(message):
        if rng.random() < 0.1:
            del message[key]
    return message if rng.random() < 0.9 else random_value(rng)


def mutate_body(rng: random.Random) -> bytes:
    """A chat request with one to three fields changed, as JSON bytes (sometimes not JSON)."""
    # Mostly a crisis message: the safety layer answers it without the model, which keeps the
    # valid requests cheap; the rest reach the model.
    content = CRISIS if rng.random() < 0.75 else "hi"
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    literals = {}
    for _ in range(rng.randrange(1, 4)):
        field, action = rng.choice(FIELDS), rng.randrange(6)
        if action == 0:
            body.pop(field, None)
        elif action == 1 and field == "messages":
            body["messages"] = [random_message(rng) for _ in range(rng.randrange(4))]
        elif action == 2:  # a bare literal json.dumps would not write: NaN, 1e400, 400 digits
            literals[field] = rng.choice(NUMBER_LITERALS)
            body[field] = f"@{field}@"
        elif action == 3 and field == "stream_options":
            body[field] = {"include_usage": random_value(rng)}
        else:
            body[field] = random_value(rng)
    for field in TOKEN_FIELDS:  # whatever passes validation reaches the model: keep it short
        value = body.get(field)  # (no NUMBER_LITERALS is a valid token count above 2)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 2 < value <= 10**6:
            body[field] = 2
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5)
    for field, literal in literals.items():
        text = text.replace(f'"@{field}@"', literal)
    data = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.05:  # invalid UTF-8 somewhere
        at = rng.randrange(len(data) + 1)
        data = data[:at] + bytes([rng.randrange(0x80, 0x100)]) + data[at:]
    return data


def random_request(rng: random.Random) -> tuple[bytes, bool, str]:
    """(bytes to send, half-close after sending, the method the answer is read for)."""
    kind = rng.randrange(100)
    if kind < 50:  # a well-framed POST with a mutated body
        return request_bytes(body=mutate_body(rng)), False, "POST"
    if kind < 58:  # truncated: the JSON cut short, or fewer bytes than Content-Length
        body = mutate_body(rng)
        cut = body[:rng.randrange(len(body))]
        if rng.random() < 0.5:
            return request_bytes(body=cut), False, "POST"
        return request_bytes(body=cut, headers={"Content-Length": str(len(body))}), True, "POST"
    if kind < 70:  # bad Content-Length and other bad headers on a good body
        body = mutate_body(rng)
        headers = rng.choice([
            {"Content-Length": rng.choice(["abc", "-1", "1e3", " ", "0x10", "+5", "١٢", "9" * 30,
                                           str(MAX_BODY + 1), str(len(body) - 1), "0"])},
            {"Transfer-Encoding": "chunked"},
            {"Expect": "100-continue"},
            {"Authorization": "Bearer " + random_text(rng)},
            {"Content-Type": "text/plain", "Connection": "close"},
            {"X-" + "a" * rng.randrange(1, 30): "\t" + random_text(rng)},
        ])
        data = request_bytes(body=body, headers=headers)
        if rng.random() < 0.2:  # a header line with no colon, or a duplicate length
            data = data.replace(b"Host: test\r\n", rng.choice([b"Host test\r\n", b"Content-Length: 3\r\n"]))
        return data, False, "POST"
    if kind < 80:  # bad methods, paths, versions
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "get", "P\x00ST"])
        path = rng.choice(["/", "/v1", CHAT + "/x", "/v1/models?x=1", "//v1/models", "*", "/%00",
                           "/v1/models/../models", "/" + "a" * rng.choice([10, 70_000])])
        version = rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "FOO", "HTTP/0.9"])
        body = b"{}" if rng.random() < 0.3 else b""
        return request_bytes(method, path, body=body, version=version), False, method
    if kind < 86:  # a huge body, refused before it is read
        body = json.dumps({"messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}).encode()
        return request_bytes(body=body), False, "POST"
    if kind < 93:  # raw garbage bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), True, "POST"
    # garbage after a good request line; no blank line ends the headers
    tail = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    return b"POST " + CHAT.encode() + b" HTTP/1.1\r\n" + tail, True, "POST"


def check_answer(reply, method: str, counts: dict):
    counts[reply.status] = counts.get(reply.status, 0) + 1
    assert reply.status == 200 or 400 <= reply.status < 600, reply.status
    assert reply.status != 500, reply.body  # the catch-all answered: a bug behind it
    if method == "HEAD":
        assert reply.body == b""
        return
    if reply.status == 200 and reply.headers.get("Content-Type") == "text/event-stream":
        assert reply.body.endswith(b"data: [DONE]\n\n")
        return
    obj = json.loads(reply.body)
    if reply.status != 200:
        error = obj["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    elif "choices" in obj and not obj["safety"]["crisis_response"]:
        counts["model"] = counts.get("model", 0) + 1


@pytest.mark.slow
def test_two_thousand_mutated_requests_each_get_an_answer_and_the_server_survives(
        smollm2, smollm2_tokenizer, capfd):
    bot = make_assistant(smollm2, smollm2_tokenizer)
    rng = random.Random(SEED)
    counts: dict = {}  # HTTP status -> answers; "model" -> completions the model wrote
    with running_server(bot, SamplingConfig(max_new_tokens=2), max_body=MAX_BODY) as httpd:
        port = httpd.server_address[1]
        for i in range(CASES):
            data, half_close, method = random_request(rng)
            try:
                check_answer(exchange(port, data, half_close, method), method, counts)
            except Exception as e:
                raise AssertionError(f"case {i} ({data[:300]!r}): {type(e).__name__}: {e}") from e
        # Still up: a list of models and a completion.
        models = exchange(port, request_bytes("GET", "/v1/models"), method="GET")
        assert models.status == 200
        reply = exchange(port, request_bytes(body={"messages": [{"role": "user", "content": "hi"}],
                                                   "max_tokens": 2}))
        assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "[server] error" not in err
    assert sum(n for status, n in counts.items() if status != "model") == CASES
    assert counts.get("model", 0) > 10 and len(counts) >= 8, counts  # the model and many errors
