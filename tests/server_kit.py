"""What the server tests share: a server.py server on 127.0.0.1 in a thread, requests written
byte by byte, and their answers read back with http.client's own response parser."""

import http.client
import json
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from assistant import Assistant
from model.tokenizer.chat import get_chat_format
from model.generation import SamplingConfig
from server import make_server

CHAT = "/v1/chat/completions"


@contextmanager
def running_server(assistant, defaults: SamplingConfig | None = None, **fields):
    """make_server(...) on a free port, serving from a thread until the block ends."""
    # 1,024 tokens a slot: the tests' conversations are short, and each server allocates its cache
    fields.setdefault("max_context", 1024)
    httpd = make_server(assistant, defaults or SamplingConfig(max_new_tokens=2), port=0, **fields)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_assistant(model, tokenizer, system_prompt=None) -> Assistant:
    """No default system prompt unless asked: short prompts keep the CPU work small."""
    return Assistant(model, tokenizer, get_chat_format(tokenizer, None), system_prompt=system_prompt)


def request_bytes(method: str = "POST", path: str = CHAT, body: bytes | dict | None = None,
                  headers: dict | None = None, version: str = "HTTP/1.1") -> bytes:
    """One request as it goes on the wire; Content-Length is the body's unless headers name one."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    body = body or b""
    lines = [f"{method} {path} {version}", "Host: test"]
    headers = dict(headers or {})
    if body and not any(k.lower() == "content-length" for k in headers):
        headers["Content-Length"] = str(len(body))
    lines += [f"{k}: {v}" for k, v in headers.items()]
    # UTF-8 on the wire, lone surrogates too: the fuzz test sends what no client library would.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + body


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> dict:
        """The body's "error" object, checked to have OpenAI's four keys."""
        error = self.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        return error


def exchange(port: int, data: bytes, half_close: bool = False, method: str = "POST",
             timeout: float = 60) -> Reply:
    """Sends raw bytes on a fresh connection and reads one answer. `half_close` ends the sending
    side afterwards, for requests that are incomplete on purpose (the server then sees EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413, 411...) and stopped reading: read that answer
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Reply(response.status, response.headers, response.read())


def post_json(port: int, obj: dict, **headers) -> Reply:
    return exchange(port, request_bytes(body=obj, headers=headers))


def patch_token_streams(monkeypatch, wrap):
    """Wraps every token stream an assistant decodes, alone (generate_stream) or in the server's
    batch (BatchDecoder.stream), as wrap(tokens) -> iterator. wrap must close `tokens` when it
    stops early: that frees the slot."""
    import assistant as assistant_module
    from model.batch_generation import BatchDecoder
    real_alone, real_batched = assistant_module.generate_stream, BatchDecoder.stream
    monkeypatch.setattr(assistant_module, "generate_stream",
                        lambda *args, **kwargs: wrap(real_alone(*args, **kwargs)))
    monkeypatch.setattr(BatchDecoder, "stream",
                        lambda self, *args, **kwargs: wrap(real_batched(self, *args, **kwargs)))
