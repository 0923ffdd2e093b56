"""Every request to server.py gets an HTTP answer, and every error is JSON in OpenAI's shape.

Each case here once got no answer at all (the handler raised and the socket closed), an HTML
page from http.server, or a sampler fed with NaN. The server runs the real SmolLM2 on
127.0.0.1; replies are one or two tokens.
"""

import json

import openai
import pytest

from model.generation import SamplingConfig
from tests.server_kit import (CHAT, exchange, make_assistant, patch_token_streams, post_json, request_bytes,
                               running_server)

USER = [{"role": "user", "content": "I can't sleep before exams."}]


@pytest.fixture(scope="module")
def bot(smollm2, smollm2_tokenizer):
    return make_assistant(smollm2, smollm2_tokenizer)


@pytest.fixture(scope="module")
def port(bot):
    with running_server(bot, SamplingConfig(max_new_tokens=2)) as httpd:
        yield httpd.server_address[1]


def bad_request(reply, param=None, status=400):
    assert reply.status == status, reply.body
    error = reply.error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    return error


# --- bodies that used to crash the handler ------------------------------------------------------


def test_role_that_is_a_list_is_a_400_naming_the_role(port):
    bad_request(post_json(port, {"messages": [{"role": [], "content": "hi"}]}), "messages[0].role")


def test_content_part_whose_text_is_a_number_is_a_400_naming_the_part(port):
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    bad_request(post_json(port, body), "messages[0].content[0].text")


def test_content_part_that_is_not_text_is_a_400(port):
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    bad_request(post_json(port, body), "messages[0].content[0]")


def test_stream_options_that_is_a_string_is_a_400(port):
    bad_request(post_json(port, {"messages": USER, "stream": True, "stream_options": "x"}),
                "stream_options")


def test_stream_that_is_a_string_is_a_400_not_a_stream(port):
    bad_request(post_json(port, {"messages": USER, "stream": "false"}), "stream")


def test_content_with_an_unpaired_surrogate_is_a_400(port):
    body = b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'
    bad_request(exchange(port, request_bytes(body=body)), "messages[0].content")


def test_deeply_nested_json_is_a_400(port):
    body = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad_request(exchange(port, request_bytes(body=body)))


def test_number_with_five_thousand_digits_is_a_400(port):
    body = b'{"messages": [], "max_tokens": ' + b"9" * 5000 + b"}"
    bad_request(exchange(port, request_bytes(body=body)))


def test_body_that_is_not_utf8_is_a_400(port):
    bad_request(exchange(port, request_bytes(body=b'{"messages": "\xff\xfe"}')))


# --- HTTP framing that used to crash or get HTML --------------------------------------------------


def test_content_length_that_is_not_a_number_is_a_400(port):
    reply = exchange(port, request_bytes(body=b"{}", headers={"Content-Length": "abc"}))
    assert bad_request(reply)["code"] == "invalid_content_length"


def test_two_different_content_lengths_are_a_400(port):
    data = request_bytes(body=b"{}", headers={"Content-Length": "2"}).replace(
        b"Content-Length: 2\r\n", b"Content-Length: 2\r\nContent-Length: 3\r\n")
    assert bad_request(exchange(port, data))["code"] == "invalid_content_length"


def test_garbage_request_line_is_a_json_400(port):
    bad_request(exchange(port, b"\x16\x03\x01 hello there general kenobi\r\n\r\n"))


def test_empty_request_line_is_a_json_400(port):
    bad_request(exchange(port, b"\r\n\r\n"))


def test_unsupported_http_version_is_a_json_505(port):
    bad_request(exchange(port, request_bytes("GET", "/v1/models", version="HTTP/2.0")), status=505)


def test_request_line_longer_than_64k_is_a_json_414(port):
    bad_request(exchange(port, request_bytes("GET", "/" + "a" * 70_000)), status=414)


def test_header_longer_than_64k_is_a_json_431(port):
    bad_request(exchange(port, request_bytes("GET", "/v1/models", headers={"X-Big": "a" * 70_000})),
                status=431)


def test_request_body_shorter_than_its_content_length_is_a_400(port):
    data = request_bytes(body=b'{"messages": []}', headers={"Content-Length": "100"})
    assert bad_request(exchange(port, data, half_close=True))["code"] == "incomplete_body"


def test_chunked_body_is_a_411(port):
    data = request_bytes(body=b"2\r\n{}\r\n0\r\n\r\n", headers={"Transfer-Encoding": "chunked"})
    bad_request(exchange(port, data), status=411)


# --- methods and paths ------------------------------------------------------------------------


def test_get_on_chat_completions_is_a_405_allowing_post(port):
    reply = exchange(port, request_bytes("GET", CHAT), method="GET")
    bad_request(reply, status=405)
    assert reply.headers["Allow"] == "POST"


def test_post_on_models_is_a_405_allowing_get(port):
    reply = exchange(port, request_bytes("POST", "/v1/models", body=b"{}"))
    bad_request(reply, status=405)
    assert reply.headers["Allow"] == "GET"


def test_delete_is_a_405(port):
    bad_request(exchange(port, request_bytes("DELETE", CHAT), method="DELETE"), status=405)


def test_head_is_a_405_with_no_body(port):
    reply = exchange(port, request_bytes("HEAD", "/v1/models"), method="HEAD")
    assert reply.status == 405 and reply.body == b""


def test_unknown_method_is_a_json_501(port):
    bad_request(exchange(port, request_bytes("BREW", CHAT), method="BREW"), status=501)


def test_unknown_path_is_a_json_404_for_any_method(port):
    bad_request(exchange(port, request_bytes("PUT", "/nothing", body=b"{}"), method="PUT"), status=404)


def test_models_path_with_a_query_string_is_served(port):
    reply = exchange(port, request_bytes("GET", "/v1/models?x=1"), method="GET")
    assert reply.status == 200 and reply.json()["object"] == "list"


# --- sampling edge cases that used to sample from NaN ---------------------------------------------


@pytest.fixture(scope="module")
def greedy_text(port):
    reply = post_json(port, {"messages": USER, "max_tokens": 2, "temperature": 0})
    assert reply.status == 200
    return reply.json()["choices"][0]["message"]["content"]


def test_top_p_zero_at_temperature_one_answers_the_greedy_text(port, greedy_text):
    reply = post_json(port, {"messages": USER, "max_tokens": 2, "temperature": 1, "top_p": 0})
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["message"]["content"] == greedy_text


def test_temperature_1e_300_answers_the_greedy_text(port, greedy_text):
    reply = post_json(port, {"messages": USER, "max_tokens": 2, "temperature": 1e-300})
    assert reply.status == 200, reply.body
    assert reply.json()["choices"][0]["message"]["content"] == greedy_text


def test_nan_temperature_is_a_400(port):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    bad_request(exchange(port, request_bytes(body=body)), "temperature")


# --- failures inside generation -----------------------------------------------------------------


@pytest.fixture
def failing_model(monkeypatch):
    """The model yields one token, then fails as a CUDA error or a bug would."""
    def failing(tokens):
        yield next(tokens)
        tokens.close()
        raise RuntimeError("the model fell over")

    patch_token_streams(monkeypatch, failing)


def test_failure_in_generation_is_a_500_json_and_one_log_line(port, failing_model, capfd):
    reply = post_json(port, {"messages": USER, "max_tokens": 4})
    bad_request(reply, status=500)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "the model fell over" in line] == [
        f"[server] error: POST {CHAT} HTTP/1.1 failed: RuntimeError: the model fell over"]


def test_failure_mid_stream_ends_with_an_error_event_and_done(port, failing_model, capfd):
    reply = exchange(port, request_bytes(body={"messages": USER, "max_tokens": 4, "stream": True}))
    assert reply.status == 200
    events = [line[len("data: "):] for line in reply.body.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and error["message"]
    assert all("error" not in json.loads(e) for e in events[:-2])
    assert "Traceback" not in capfd.readouterr().err


def test_unexpected_exception_before_generation_is_a_500_json(port, bot, monkeypatch, capfd):
    def broken(messages):
        raise KeyError("chat template")

    monkeypatch.setattr(bot, "prompt_ids", broken)
    bad_request(post_json(port, {"messages": USER}), status=500)
    assert "Traceback" not in capfd.readouterr().err


def test_server_keeps_serving_after_a_failure(port, failing_model):
    post_json(port, {"messages": USER, "max_tokens": 4})
    reply = exchange(port, request_bytes("GET", "/v1/models"), method="GET")
    assert reply.status == 200


def test_openai_client_raises_api_error_on_a_failed_stream(port, failing_model):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=USER, max_tokens=4, stream=True)
    with pytest.raises(openai.APIError, match="Generation failed"):
        list(stream)
