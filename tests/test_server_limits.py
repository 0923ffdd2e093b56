"""server.py's limits: the API key, the body-size cap, read timeouts, the connection cap, the
warning for an exposed server without a key, and a client that leaves stopping its generation.

Each server runs the real SmolLM2 on 127.0.0.1. No test measures time: the timeout tests wait
for the server's answer, the disconnect tests count generated tokens.
"""

import http.client
import select
import socket
import threading
import time

import openai
import pytest

import server
from model.errors import UserError
from model.generation import SamplingConfig
from server import ServerConfig, exposure_warning
from tests.server_kit import (Reply, exchange, make_assistant, patch_token_streams, post_json, request_bytes,
                               running_server)

KEY = "sk-local-test-key"
USER = [{"role": "user", "content": "I can't sleep before exams."}]
LONG = [{"role": "user", "content": "Tell me a long story about a dragon."}]


@pytest.fixture(scope="module")
def bot(smollm2, smollm2_tokenizer):
    return make_assistant(smollm2, smollm2_tokenizer)


def get_models(port, **headers) -> Reply:
    return exchange(port, request_bytes("GET", "/v1/models", headers=headers), method="GET")


# --- --api-key ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(bot):
    with running_server(bot, api_key=KEY) as httpd:
        yield httpd.server_address[1]


def test_request_without_a_key_is_a_401_in_openai_shape(keyed):
    reply = get_models(keyed)
    assert reply.status == 401
    assert reply.error["code"] == "invalid_api_key"
    assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_request_with_a_wrong_key_is_a_401(keyed):
    assert get_models(keyed, Authorization="Bearer sk-wrong").status == 401


def test_key_sent_without_the_bearer_scheme_is_a_401(keyed):
    assert get_models(keyed, Authorization=KEY).status == 401


def test_post_without_a_key_is_a_401_before_the_body_is_read(keyed):
    data = request_bytes(body=b"", headers={"Content-Length": "500"})  # the body never comes
    assert exchange(keyed, data).status == 401


def test_request_with_the_key_is_served(keyed):
    assert get_models(keyed, Authorization=f"Bearer {KEY}").status == 200


def test_openai_client_with_the_key_gets_a_completion(keyed):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{keyed}/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model="m", messages=USER, max_tokens=1)
    assert reply.choices[0].message.content is not None
    assert reply.usage.completion_tokens == 1


def test_openai_client_with_a_wrong_key_raises_authentication_error(keyed):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{keyed}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_server_without_a_key_asks_for_none(bot):
    with running_server(bot) as httpd:
        assert get_models(httpd.server_address[1]).status == 200


def test_empty_api_key_is_a_one_line_error():
    with pytest.raises(UserError, match="--api-key"):
        ServerConfig(api_key="")


# --- the warning for a server reachable from other machines ------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5"])
def test_non_loopback_address_without_a_key_warns(host):
    assert "no API key" in exposure_warning(host, None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_address_does_not_warn(host):
    assert exposure_warning(host, None) is None


def test_non_loopback_address_with_a_key_does_not_warn():
    assert exposure_warning("0.0.0.0", KEY) is None


class _Decoder:
    def run(self):            # serve() decodes on the calling thread until Ctrl-C
        raise KeyboardInterrupt


class _Bound:
    """Stands in for a server bound to every interface (tests bind 127.0.0.1 only)."""
    server_address = ("0.0.0.0", 8000)
    decoder = _Decoder()

    def serve_forever(self):
        pass

    def shutdown(self):
        pass

    def server_close(self):
        pass


def test_serve_prints_the_warning_on_stderr_when_bound_beyond_loopback(monkeypatch, capsys):
    monkeypatch.setattr(server, "make_server", lambda *a, **k: _Bound())
    server.serve(None, SamplingConfig(), ServerConfig(host="0.0.0.0"))
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: serving on 0.0.0.0")
    assert "serving local at http://0.0.0.0:8000/v1" in captured.out


def test_serve_with_a_key_prints_no_warning(monkeypatch, capsys):
    monkeypatch.setattr(server, "make_server", lambda *a, **k: _Bound())
    server.serve(None, SamplingConfig(), ServerConfig(host="0.0.0.0", api_key=KEY))
    assert "warning" not in capsys.readouterr().err


# --- --max-body ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(bot):
    with running_server(bot, max_body=1000) as httpd:
        yield httpd.server_address[1]


def test_content_length_over_max_body_is_a_413_without_the_body_being_sent(capped):
    # Only the headers go out: the answer cannot depend on reading the body.
    reply = exchange(capped, request_bytes(body=b"", headers={"Content-Length": "5000"}))
    assert reply.status == 413
    assert reply.error["code"] == "request_too_large"
    assert reply.headers["Connection"] == "close"


def test_content_length_of_twenty_digits_is_a_413(capped):
    reply = exchange(capped, request_bytes(body=b"", headers={"Content-Length": "9" * 20}))
    assert reply.status == 413


def test_body_of_exactly_max_body_is_read(capped):
    body = b'{"messages": ' + b" " * (1000 - 16) + b"[]}"
    assert len(body) == 1000
    reply = exchange(capped, request_bytes(body=body))
    assert reply.status == 400 and reply.error["param"] == "messages"  # parsed, not refused


def test_openai_client_sending_a_big_body_gets_the_413(capped):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{capped}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="m", max_tokens=1,
                                       messages=[{"role": "user", "content": "word " * 5000}])
    assert raised.value.status_code == 413


def test_expect_100_continue_over_max_body_gets_the_413_instead_of_continue(capped):
    data = request_bytes(body=b"", headers={"Content-Length": "5000", "Expect": "100-continue"})
    with socket.create_connection(("127.0.0.1", capped), timeout=60) as sock:
        sock.sendall(data)
        assert sock.recv(64).startswith(b"HTTP/1.1 413")


def test_max_body_below_one_is_a_one_line_error():
    with pytest.raises(UserError, match="--max-body"):
        ServerConfig(max_body=0)


# --- read timeouts ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(bot):
    with running_server(bot, read_timeout=0.5) as httpd:
        yield httpd.server_address[1]


def test_body_that_stops_arriving_gets_a_408(impatient):
    data = request_bytes(body=b'{"messages": ', headers={"Content-Length": "200"})
    reply = exchange(impatient, data)  # never half-closed: the server has to give up by itself
    assert reply.status == 408
    assert reply.error["code"] == "request_timeout"


def test_headers_that_stop_arriving_get_a_408(impatient):
    reply = exchange(impatient, b"POST /v1/chat/completions HTTP/1.1\r\nHost: te")
    assert reply.status == 408


def test_headers_trickled_a_byte_at_a_time_still_get_a_408(impatient):
    # Each byte comes well within the timeout; the request as a whole does not. A per-read
    # socket timeout would wait for ever.
    with socket.create_connection(("127.0.0.1", impatient), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        for _ in range(600):
            if select.select([sock], [], [], 0.05)[0]:  # the server has answered
                break
            sock.sendall(b"X")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408


def test_idle_connection_is_closed_by_the_server(impatient):
    with socket.create_connection(("127.0.0.1", impatient), timeout=60) as sock:
        assert sock.recv(1) == b""  # EOF: the server hung up on a client that sent nothing


def test_idle_keep_alive_connection_is_closed_after_an_answer(impatient):
    with socket.create_connection(("127.0.0.1", impatient), timeout=60) as sock:
        sock.sendall(request_bytes("GET", "/v1/models"))
        received = b""
        while True:  # the answer, then EOF once the connection has been idle too long
            data = sock.recv(65536)
            if not data:
                break
            received += data
        assert received.startswith(b"HTTP/1.1 200")


def test_read_timeout_of_zero_is_a_one_line_error():
    with pytest.raises(UserError, match="--read-timeout"):
        ServerConfig(read_timeout=0)


# --- --max-connections --------------------------------------------------------------------------


def test_connection_over_the_limit_gets_a_503_and_later_ones_are_served(bot):
    with running_server(bot, max_connections=2) as httpd:
        port = httpd.server_address[1]
        holders = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(2)]
        # Accepted in order: both holders own a slot before the third connection is looked at.
        reply = get_models(port)
        assert reply.status == 503
        assert reply.error["code"] == "server_busy"
        assert reply.headers["Retry-After"] == "1"
        for sock in holders:
            sock.close()
        for _ in range(200):  # the holders' threads end as soon as they see EOF
            reply = get_models(port)
            if reply.status == 200:
                break
        assert reply.status == 200


def test_max_connections_below_one_is_a_one_line_error():
    with pytest.raises(UserError, match="--max-connections"):
        ServerConfig(max_connections=0)


# --- a client that leaves -----------------------------------------------------------------------


class PausedModel:
    """Wraps the token generator: the first call signals `started`, then holds its first token
    until `release` is set, so the test can act at a known point of the generation."""

    def __init__(self, monkeypatch):
        self.calls, self.started, self.release = [], threading.Event(), threading.Event()

        def paused(tokens_in):
            tokens = []
            self.calls.append(tokens)
            first = len(self.calls) == 1
            try:
                for token in tokens_in:
                    if first and not tokens:
                        self.started.set()
                        assert self.release.wait(60), "the test never released the generation"
                    tokens.append(token)
                    yield token
            finally:
                tokens_in.close()

        patch_token_streams(monkeypatch, paused)


@pytest.fixture(scope="module")
def plain(bot):
    with running_server(bot, SamplingConfig(max_new_tokens=2, temperature=0)) as httpd:
        yield httpd.server_address[1]


def send_and_close_after_start(port, model: PausedModel, body: dict):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(request_bytes(body=body))
    assert model.started.wait(60), "the server never started generating"
    sock.close()
    model.release.set()


def test_non_streamed_request_whose_client_left_stops_generating(plain, monkeypatch):
    model = PausedModel(monkeypatch)
    send_and_close_after_start(plain, model, {"messages": LONG, "max_tokens": 200})
    assert post_json(plain, {"messages": USER, "max_tokens": 1}).status == 200
    assert len(model.calls) == 2
    assert len(model.calls[0]) == 1  # stopped at the first token, of 200 allowed


def test_streamed_request_whose_client_left_stops_generating(plain, monkeypatch):
    model = PausedModel(monkeypatch)
    send_and_close_after_start(plain, model, {"messages": LONG, "max_tokens": 200, "stream": True})
    assert post_json(plain, {"messages": USER, "max_tokens": 1}).status == 200
    assert len(model.calls[0]) == 1


@pytest.fixture(scope="module")
def one_slot(bot):
    with running_server(bot, SamplingConfig(max_new_tokens=2, temperature=0), max_batch=1) as httpd:
        yield httpd.server_address[1]


def test_request_whose_client_left_while_queued_generates_nothing(one_slot, monkeypatch):
    model = PausedModel(monkeypatch)
    first = threading.Thread(target=post_json, args=(one_slot, {"messages": USER, "max_tokens": 1}))
    first.start()
    assert model.started.wait(60)  # the first request holds the only batch slot
    with socket.create_connection(("127.0.0.1", one_slot), timeout=60) as sock:
        sock.sendall(request_bytes(body={"messages": LONG, "max_tokens": 200}))
    time.sleep(0.5)                # the second request is read and waits for the slot
    model.release.set()
    first.join(60)
    assert post_json(one_slot, {"messages": USER, "max_tokens": 1}).status == 200
    # the first and the last made a token each; the one that left made none
    assert [len(tokens) for tokens in model.calls] == [1, 0, 1]


def test_disconnect_is_logged_as_one_line(plain, monkeypatch, capfd):
    model = PausedModel(monkeypatch)
    send_and_close_after_start(plain, model, {"messages": LONG, "max_tokens": 200})
    post_json(plain, {"messages": USER, "max_tokens": 1})
    err = capfd.readouterr().err
    assert "[server] client left; generation stopped after 1 tokens" in err
    assert "Traceback" not in err


def test_pipelined_request_is_not_taken_for_a_disconnect(plain):
    # The second request waits in the socket while the first generates: data, not an EOF.
    data = (request_bytes(body={"messages": USER, "max_tokens": 2})
            + request_bytes("GET", "/v1/models", headers={"Connection": "close"}))
    with socket.create_connection(("127.0.0.1", plain), timeout=60) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b'"completion_tokens": 2' in received
