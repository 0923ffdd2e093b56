"""The OpenAI-compatible server (server.py) over the real SmolLM2, spoken to with the official
`openai` client and, for malformed requests, with raw HTTP.

The server runs in this process on 127.0.0.1 with a free port, loaded once for the module.
Replies are kept to a few tokens: the model runs on a CPU.
"""

import http.client
import json
import socket
import struct
import threading

import openai
import pytest

import safety
from assistant import Assistant
from model.tokenizer.chat import get_chat_format
from model.generation import SamplingConfig
from server import make_server
from tests.server_kit import patch_token_streams

MODEL_NAME = "smollm2-under-test"
SYSTEM = "You are a warm, careful listener. Keep answers short."
USER = "I can't sleep before exams."
GREEDY_TOKENS = 16
CRISIS = "I want to kill myself tonight. I have the pills ready."


class Served:
    def __init__(self, assistant, httpd):
        self.assistant = assistant
        self.httpd = httpd
        self.host, self.port = httpd.server_address[:2]
        self.base_url = f"http://{self.host}:{self.port}/v1"


@pytest.fixture(scope="module")
def served(smollm2, smollm2_tokenizer):
    assistant = Assistant(smollm2, smollm2_tokenizer, get_chat_format(smollm2_tokenizer, None))
    httpd = make_server(assistant, SamplingConfig(max_new_tokens=GREEDY_TOKENS), port=0,
                        model_name=MODEL_NAME, max_context=1024)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield Served(assistant, httpd)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="x", max_retries=0, timeout=120)


def messages(user=USER, system=SYSTEM):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@pytest.fixture(scope="module")
def greedy(client):
    """One plain greedy completion that several tests read."""
    return client.chat.completions.create(model=MODEL_NAME, messages=messages(), temperature=0,
                                          max_tokens=GREEDY_TOKENS)


@pytest.fixture(scope="module")
def streamed(client):
    """The same request as `greedy`, streamed, with usage asked for: the list of chunks."""
    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages(),
                                            temperature=0, max_tokens=GREEDY_TOKENS,
                                            stream=True, stream_options={"include_usage": True})
    return list(stream)


@pytest.fixture(scope="module")
def reference_tokenizer(smollm2_dir):
    """Hugging Face's `tokenizers` over the model's tokenizer.json: an independent count."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(smollm2_dir / "tokenizer.json"))


def chatml_ids(reference_tokenizer, conversation) -> list[int]:
    """SmolLM2's ChatML prompt written out by hand, encoded by the reference tokenizer."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation)
    text += "<|im_start|>assistant\n"
    return reference_tokenizer.encode(text, add_special_tokens=False).ids


def post(served, path: str, body: bytes, content_type="application/json"):
    """A raw POST; returns (status, parsed JSON body)."""
    conn = http.client.HTTPConnection(served.host, served.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post_json(served, obj: dict):
    return post(served, "/v1/chat/completions", json.dumps(obj).encode())


def assert_openai_error(status, body, expected_status=400):
    assert status == expected_status, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert {"param", "code"} <= set(error)
    return error


# --- normal completions -----------------------------------------------------------------------


def test_completion_returns_nonempty_assistant_text(greedy):
    message = greedy.choices[0].message
    assert message.role == "assistant"
    assert message.content.strip()


def test_completion_reports_the_served_model_name(greedy):
    assert greedy.model == MODEL_NAME
    assert greedy.object == "chat.completion"


def test_usage_prompt_tokens_match_a_reference_tokenizer(greedy, reference_tokenizer):
    assert greedy.usage.prompt_tokens == len(chatml_ids(reference_tokenizer, messages()))


def test_usage_completion_tokens_equal_max_tokens_and_add_up(greedy):
    assert greedy.usage.completion_tokens == GREEDY_TOKENS
    assert greedy.usage.total_tokens == greedy.usage.prompt_tokens + GREEDY_TOKENS


def test_finish_reason_is_length_when_max_tokens_is_reached(greedy):
    assert greedy.choices[0].finish_reason == "length"


def test_default_system_prompt_is_added_when_the_request_has_none(client, reference_tokenizer):
    reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=1,
                                           messages=[{"role": "user", "content": USER}])
    expected = chatml_ids(reference_tokenizer, [{"role": "system", "content": safety.SYSTEM_PROMPT},
                                                {"role": "user", "content": USER}])
    assert reply.usage.prompt_tokens == len(expected)


def test_safety_field_reports_no_risk_for_an_ordinary_message(greedy):
    report = greedy.model_extra["safety"]
    assert report["level"] == "none"
    assert report["crisis_response"] is False


def test_same_seed_gives_the_same_text_at_temperature_one(client):
    def sample(seed):
        return client.chat.completions.create(model=MODEL_NAME, messages=messages(), max_tokens=8,
                                              temperature=1.0, seed=seed).choices[0].message.content
    first, again, other = sample(7), sample(7), sample(8)
    assert first == again
    assert first != other  # the seed is used, not ignored


# --- stop strings -----------------------------------------------------------------------------


def test_stop_string_cuts_the_text_before_it(client, greedy):
    text = greedy.choices[0].message.content
    stop = text.split()[2]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages(), temperature=0,
                                           max_tokens=GREEDY_TOKENS, stop=[stop])
    assert reply.choices[0].message.content == text[:text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_stop_string_across_a_sentence_end_still_cuts(client, greedy):
    # The reply is released to the client a sentence at a time; a stop string that starts
    # before a sentence end and finishes after it must still be found.
    text = greedy.choices[0].message.content
    end = text.find(". ")
    assert 4 <= end and end + 4 < len(text), f"the greedy reply has no inner sentence end: {text!r}"
    stop = text[end - 3:end + 4]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages(), temperature=0,
                                           max_tokens=GREEDY_TOKENS, stop=stop)
    assert reply.choices[0].message.content == text[:text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


# --- streaming --------------------------------------------------------------------------------


def test_stream_chunks_concatenate_to_the_non_streamed_text(streamed, greedy):
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == greedy.choices[0].message.content


def test_stream_first_chunk_carries_the_assistant_role(streamed):
    assert streamed[0].choices[0].delta.role == "assistant"
    assert streamed[0].object == "chat.completion.chunk"


def test_stream_last_choice_chunk_has_the_finish_reason(streamed):
    with_choices = [chunk for chunk in streamed if chunk.choices]
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert all(chunk.choices[0].finish_reason is None for chunk in with_choices[:-1])


def test_stream_include_usage_sends_the_usage_of_the_plain_request(streamed, greedy):
    last = streamed[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        greedy.usage.prompt_tokens, greedy.usage.completion_tokens, greedy.usage.total_tokens)


def test_stream_without_include_usage_sends_no_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages(),
                                                 max_tokens=2, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


# --- models -----------------------------------------------------------------------------------


def test_models_list_names_the_served_model(client):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


# --- bad requests -----------------------------------------------------------------------------


def test_invalid_json_is_a_400_error(served):
    assert_openai_error(*post(served, "/v1/chat/completions", b'{"messages": [}'))


def test_body_that_is_not_an_object_is_a_400_error(served):
    assert_openai_error(*post(served, "/v1/chat/completions", b'["hello"]'))


def test_missing_messages_is_a_400_error_naming_messages(served):
    error = assert_openai_error(*post_json(served, {"model": MODEL_NAME}))
    assert error["param"] == "messages"


def test_empty_messages_is_a_400_error_naming_messages(served):
    error = assert_openai_error(*post_json(served, {"model": MODEL_NAME, "messages": []}))
    assert error["param"] == "messages"


def test_unknown_role_is_a_400_error_naming_the_message(served):
    body = {"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "hi"}]}
    error = assert_openai_error(*post_json(served, body))
    assert error["param"] == "messages[1].role"


def test_n_above_one_is_a_400_error_naming_n(served):
    error = assert_openai_error(*post_json(served, {"messages": messages(), "n": 2}))
    assert error["param"] == "n"


def test_temperature_out_of_range_is_a_400_error(served):
    error = assert_openai_error(*post_json(served, {"messages": messages(), "temperature": 5}))
    assert error["param"] == "temperature"


def test_prompt_longer_than_the_context_is_a_400_error(served, smollm2):
    words = smollm2.config.max_seq_len + 800  # one token or more per word
    body = {"messages": [{"role": "user", "content": "word " * words}], "max_tokens": 4}
    error = assert_openai_error(*post_json(served, body))
    assert error["code"] == "context_length_exceeded"


def test_openai_client_raises_bad_request_for_an_unknown_role(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, max_tokens=2,
                                       messages=[{"role": "wizard", "content": "hi"}])


def test_unknown_post_path_is_a_404_error(served):
    assert_openai_error(*post(served, "/v1/completions", b"{}"), expected_status=404)


def test_unknown_get_path_is_a_404_error(served):
    conn = http.client.HTTPConnection(served.host, served.port, timeout=60)
    try:
        conn.request("GET", "/v1/nothing-here")
        response = conn.getresponse()
        assert_openai_error(response.status, json.loads(response.read()), expected_status=404)
    finally:
        conn.close()


# --- safety -----------------------------------------------------------------------------------


@pytest.fixture
def model_calls(monkeypatch):
    """Records every call into the model's token generator (one list of tokens per call)."""
    calls = []

    def counted(tokens_in):
        tokens = []
        calls.append(tokens)
        try:
            for token in tokens_in:
                tokens.append(token)
                yield token
        finally:
            tokens_in.close()

    patch_token_streams(monkeypatch, counted)
    return calls


def test_crisis_message_gets_the_crisis_response_and_not_the_model(client, model_calls):
    reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=8,
                                           messages=[{"role": "user", "content": CRISIS}])
    content = reply.choices[0].message.content
    assert "988" in content
    assert content == safety.crisis_response(safety.detect(CRISIS), "US")
    report = reply.model_extra["safety"]
    assert report["level"] == "crisis"
    assert report["crisis_response"] is True
    assert model_calls == []


# --- a client that leaves mid-stream ------------------------------------------------------------


def test_client_leaving_mid_stream_stops_generation_and_server_keeps_serving(served, client,
                                                                             model_calls):
    max_tokens = 64  # this prompt's greedy reply runs past 64 tokens
    body = json.dumps({"messages": messages("Tell me a long story about a dragon."),
                       "max_tokens": max_tokens, "temperature": 0, "stream": True}).encode()
    sock = socket.create_connection((served.host, served.port), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                 b"Content-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data: " not in received:  # the headers and the first (role) chunk
        data = sock.recv(4096)
        assert data, "the server closed the stream before its first chunk"
        received += data
    assert received.startswith(b"HTTP/1.1 200")
    # Linger 0: close with a reset, as a killed client does, so the server's next write fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages(), max_tokens=2)
    assert reply.choices[0].message.content
    assert len(model_calls) == 2
    assert 0 < len(model_calls[0]) < max_tokens
