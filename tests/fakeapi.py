"""A scripted OpenAI-compatible server on 127.0.0.1 for testing the synth pipeline offline.

    with FakeAPI(schedule=["429", "ok", "drop"]) as api:
        ... point the client at api.base_url ...
        api.requests        # every POST body it received, in arrival order

It serves POST /v1/chat/completions and GET /v1/models. Each chat request takes the next entry
of `schedule` (then "ok" once the schedule runs out) and answers with it:

    "ok"         a normal completion; its text is reply(messages, model), by default
                 "Echo: " + the last user message, so tests can check what was sent
    "429"        rate limited, with a Retry-After: 0 header
    "500"        internal server error
    "timeout"    sleeps `slow_seconds` before answering (set the client's timeout below it)
    "malformed"  status 200 with a JSON content type and a body that is not JSON
    "drop"       closes the socket without sending a response
    "401"        invalid API key
    "404"        model not found

`fault_for(body)` picks a fault from the request itself, so a test can fail some rows every
time whatever order they arrive in; when it returns None the schedule decides.

Independently of the schedule, a request whose model is not in `models` gets a 404 and one
whose bearer token differs from `api_key` (when one is set) gets a 401, as real servers do.
Usage is reported as word counts (prompt: all messages; completion: the reply) and summed in
`usage_sent` for the replies a client can receive.
`delay` seconds are slept before every answer, so a subprocess can be killed partway.
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "429", "500", "timeout", "malformed", "drop", "401", "404")


def echo_reply(messages: list[dict], model: str) -> str:
    """The default completion text: derived from the prompt, so a test can check content."""
    last_user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return "Echo: " + last_user


class FakeAPI:
    def __init__(self, schedule=(), reply=echo_reply, models=("fake-model",), api_key=None,
                 delay=0.0, slow_seconds=2.0, fault_for=None):
        for fault in schedule:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS}")
        self.schedule = list(schedule)
        self.reply = reply
        self.models = set(models)
        self.api_key = api_key
        self.delay = delay
        self.slow_seconds = slow_seconds
        self.fault_for = fault_for
        self.requests: list[dict] = []   # POST bodies, in arrival order
        self.served: list[str] = []      # the fault (or "ok") each request was answered with
        self.usage_sent = [0, 0]         # prompt, completion tokens reported in "ok" replies
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)  # 0.05 s poll: a quick stop()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def next_fault(self, body: dict) -> str:
        """Record a request and pick how to answer it (under a lock: handlers run in threads)."""
        chosen = self.fault_for(body) if self.fault_for is not None else None
        if chosen is not None and chosen not in FAULTS:
            raise ValueError(f"fault_for gave unknown fault {chosen!r}; use one of {FAULTS}")
        with self._lock:
            self.requests.append(body)
            fault = chosen or (self.schedule.pop(0) if self.schedule else "ok")
            self.served.append(fault)
            return fault

    def count(self, fault: str) -> int:
        with self._lock:
            return self.served.count(fault)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # a sleeping "timeout" handler must not block exit

    def handle_error(self, request, client_address):
        pass  # clients that hang up (timeouts, killed processes) are part of the script


def _handler_for(api: FakeAPI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers; "drop" then tests reuse
        disable_nagle_algorithm = True  # headers and body go out as separate small writes

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send_json(self, status: int, payload, headers=()):
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a "timeout" answer arrives after it left)

        def _error(self, status: int, message: str, code: str, headers=()):
            self._send_json(status, {"error": {"message": message, "type": "fake_error",
                                               "code": code}}, headers)

        def do_GET(self):
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"no route {self.path}", "not_found")
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in sorted(api.models)]
            self._send_json(200, {"object": "list", "data": data})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}", "not_found")
            fault = api.next_fault(body)
            time.sleep(api.delay)
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if fault == "401" or (api.api_key is not None and token != api.api_key):
                return self._error(401, "Incorrect API key provided.", "invalid_api_key")
            if fault == "404" or body.get("model") not in api.models:
                return self._error(404, f"The model `{body.get('model')}` does not exist.",
                                   "model_not_found")
            if fault == "429":
                return self._error(429, "Rate limit reached.", "rate_limit_exceeded",
                                   headers=[("Retry-After", "0")])
            if fault == "500":
                return self._error(500, "The server had an error.", "server_error")
            if fault == "malformed":
                return self._send_json(200, b'{"id": "chatcmpl-x", "choices": [{"mess')
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "timeout":
                time.sleep(api.slow_seconds)  # the client has given up by now
            text = api.reply(body["messages"], body["model"])
            prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
            completion_tokens = len(text.split())
            if fault == "ok":  # a "timeout" reply reaches nobody
                with api._lock:
                    api.usage_sent[0] += prompt_tokens
                    api.usage_sent[1] += completion_tokens
            self._send_json(200, {
                "id": f"chatcmpl-{len(api.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens,
                          "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            })

    return Handler
