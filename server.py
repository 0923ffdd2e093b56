"""An OpenAI-compatible HTTP API over the assistant (`python generate.py --serve`).

    GET  /v1/models
    POST /v1/chat/completions   messages, temperature, top_p, max_tokens, stop, seed, n=1, stream

Standard library only (http.server). Requests are answered one at a time: a lock serialises
generation, while /v1/models still answers during a long generation. Each response carries the
safety layer's verdict in an extra field, "safety". Errors use OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""

import json
import threading
import time
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from model.generation import SamplingConfig

ROLES = {"system", "user", "assistant", "developer"}


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def parse_request(body: bytes, defaults: SamplingConfig, context: int) -> tuple[list[dict], SamplingConfig, list[str], bool, bool]:
    """Validates a chat-completions body -> (messages, sampling, stop strings, stream, include_usage)."""
    try:
        req = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("The request body is not valid JSON.") from None
    if not isinstance(req, dict):
        raise RequestError("The request body must be a JSON object.")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list.", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise RequestError(f"messages[{i}].role '{role}' is not one of system, user, assistant.",
                               param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string.", param=f"messages[{i}].content")
        role = "system" if m["role"] == "developer" else m["role"]
        clean.append({"role": role, "content": content})
    if req.get("n", 1) != 1:
        raise RequestError("Only n=1 is supported.", param="n")

    def number(key, kind, lo, hi, default):
        value = req.get(key)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise RequestError(f"'{key}' must be a number between {lo} and {hi}.", param=key)
        return kind(value)

    max_key = "max_completion_tokens" if "max_completion_tokens" in req else "max_tokens"
    sampling = replace(
        defaults,
        temperature=number("temperature", float, 0, 2, defaults.temperature),
        top_p=number("top_p", float, 0, 1, defaults.top_p),
        max_new_tokens=number(max_key, int, 1, context, defaults.max_new_tokens),
        seed=number("seed", int, 0, 2**63 - 1, defaults.seed),
    )
    stop = req.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise RequestError("'stop' must be a string or a list of up to 4 strings.", param="stop")
    stream = bool(req.get("stream", False))
    include_usage = bool((req.get("stream_options") or {}).get("include_usage", False))
    return clean, sampling, stop, stream, include_usage


def make_handler(assistant, defaults: SamplingConfig, model_name: str):
    lock = threading.Lock()
    context = assistant.model.config.max_seq_len

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):  # one short line per request on stderr
            print(f"[server] {self.command} {self.path} -> {a[1] if len(a) > 1 else ''}", flush=True)

        def _json(self, status: int, obj: dict):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status, message, type_="invalid_request_error", param=None, code=None):
            self._json(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._json(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "created": 0, "owned_by": "local"}]})
            else:
                self._error(404, f"Unknown path {self.path}.", code="not_found")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"Unknown path {self.path}.", code="not_found")
            try:
                messages, sampling, stop, stream, include_usage = parse_request(body, defaults, context)
                prompt_ids = assistant.prompt_ids(messages)
                if len(prompt_ids) + 1 > context:
                    raise RequestError(f"The prompt has {len(prompt_ids)} tokens; this model's context "
                                       f"is {context}.", param="messages", code="context_length_exceeded")
                sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, context - len(prompt_ids)))
            except RequestError as e:
                return self._error(e.status, str(e), param=e.param, code=e.code)
            with lock:
                pieces = assistant.reply_stream(messages, sampling, stop, prompt_ids=prompt_ids)
                if stream:
                    self._stream(pieces, include_usage)
                else:
                    text = "".join(pieces)
                    self._json(200, self._completion(text))

        def _completion(self, text: str) -> dict:
            info = assistant.last
            return {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": info.finish_reason}],
                "usage": _usage(info),
                "safety": _safety(info),
            }

        def _stream(self, pieces, include_usage: bool):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model_name}

            def send(choices, **extra):
                chunk = dict(base, choices=choices, **extra)
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            try:
                send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                for piece in pieces:
                    send([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                info = assistant.last
                send([{"index": 0, "delta": {}, "finish_reason": info.finish_reason}], safety=_safety(info))
                if include_usage:
                    send([], usage=_usage(info))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                pieces.close()  # the client left: stop generating, free the cache
                print("[server] client disconnected mid-stream", flush=True)

    return Handler


def _usage(info) -> dict:
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": info.completion_tokens,
            "total_tokens": info.prompt_tokens + info.completion_tokens}


def _safety(info) -> dict:
    return {**info.safety, "crisis_response": info.crisis, "screened": info.screened,
            "screen_reasons": info.screen_reasons}


def make_server(assistant, defaults: SamplingConfig, host="127.0.0.1", port=8000, model_name="local"):
    return ThreadingHTTPServer((host, port), make_handler(assistant, defaults, model_name))


def serve(assistant, defaults: SamplingConfig, host="127.0.0.1", port=8000, model_name="local"):
    httpd = make_server(assistant, defaults, host, port, model_name)
    print(f"serving {model_name} at http://{host}:{httpd.server_address[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
