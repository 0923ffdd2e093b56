"""An OpenAI-compatible HTTP API over the assistant (`python generate.py --serve`).

    GET  /v1/models
    POST /v1/chat/completions   messages, temperature, top_p, max_tokens, stop, seed, n=1, stream

Standard library only (http.server), a thread per connection. Generation is batched: every
request in flight decodes in the same forward passes (model/batch_generation.py, at most
--max-batch at once, the rest wait for a slot), each with its own sampling settings, stop
strings and seed, and gets the tokens it would get alone. Each response carries the safety
layer's verdict in an extra field, "safety".

Every request gets an answer, and every error is JSON in OpenAI's shape
{"error": {"message", "type", "param", "code"}}: a bad request line or header (400, 414, 431),
a missing or wrong API key (401), an unknown path (404), a wrong method (405, with Allow), a body
too slow (408), without Content-Length (411) or too large (413, sent before the body is read),
an unknown method (501), too many connections (503), and any bug (500, logged as one line).
A stream that fails ends with an error event and `data: [DONE]`. A client that leaves stops its
generation at the next token, streamed or not. The limits are ServerConfig's fields.
"""

import hmac
import io
import ipaddress
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from assistant import TurnInfo
from chat_request import RequestError, parse_request
from model.batch_generation import BatchDecoder
from model.errors import UserError
from model.generation import SamplingConfig

ROUTES = {"/v1/models": "GET", "/v1/chat/completions": "POST"}  # path -> its one method
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}  # others: 501
API_KEY_ENV = "LLAMACARE_API_KEY"  # generate.py's --api-key default
LINGER_S = 2.0  # at most this long spent draining what a refused client still sends (_linger)
EXIT_GRACE_S = 10.0  # at most this long waited, when the server closes, for handler threads to finish
# Client text in the log is escaped: a path must not forge log lines or move the terminal.
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "local"
    api_key: str | None = None   # None: no key asked; else every request needs "Bearer <key>"
    max_body: int = 1 << 20      # bytes; a larger Content-Length gets 413 without being read
    read_timeout: float = 30.0   # seconds to send a whole request, or to start the next one
    max_connections: int = 32    # connections served at once; one more gets 503 straight away
    max_batch: int = 8           # requests decoding together; more wait for a free slot
    max_context: int = 2048      # tokens (prompt + reply) one slot holds, at most the model's context

    def __post_init__(self):
        for flag, value, ok in [("--max-body", self.max_body, self.max_body >= 1),
                                ("--read-timeout", self.read_timeout, self.read_timeout > 0),
                                ("--max-connections", self.max_connections, self.max_connections >= 1),
                                ("--max-batch", self.max_batch, self.max_batch >= 1),
                                ("--max-context", self.max_context, self.max_context >= 2)]:
            if not ok:
                raise UserError(f"{flag} must be above 0, got {value}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: must be in [0, 65535] (0: any free port)")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key is empty: pass a key, or leave the flag (and "
                            f"{API_KEY_ENV}) out to serve without one")


def make_handler(assistant, defaults: SamplingConfig, config: ServerConfig):
    """The request handler class; `assistant` must have a decoder (make_server gives it one)."""
    context = assistant.decoder.max_len
    model_name = config.model_name

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        default_request_version = "HTTP/1.0"  # a garbage request line still gets a status line
        timeout = config.read_timeout          # a write waits at most this (reads: _DeadlineReader)
        server_version = "llamacare"

        # --- one request: parse, route, and the guarantee that it is answered -----------------

        def handle_one_request(self):
            """http.server's loop body, answering what it leaves unanswered: an empty request line,
            a timeout mid-request (408) and any exception (500, one log line)."""
            self.responded, self.raw_requestline = False, b""
            self.requestline, self.command, self.request_version = "", None, self.default_request_version
            self.reader.restart()  # the whole next request (line, headers, body) within read_timeout
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline:  # the client closed an idle connection
                    self.close_connection = True
                    return
                if len(self.raw_requestline) > 65536:
                    return self.send_error(414, "The request line is longer than 65,536 bytes")
                if not self.raw_requestline.strip():
                    return self.send_error(400, "The request line is empty")
                if not self.parse_request():  # answered there, through send_error
                    return
                if self.command not in METHODS:
                    return self.send_error(501, f"Unsupported method {self.command!r}")
                self.route()
            except TimeoutError:  # the client went silent, or too slow
                self.connection.settimeout(config.read_timeout)
                if self.raw_requestline and not self.responded:  # mid-request, not idle
                    self._answer_error(408, f"The request did not arrive within {config.read_timeout:g} s "
                                            "(--read-timeout).", code="request_timeout")
                self.close_connection = True
            except ConnectionError:  # reset or broken pipe: the client left
                self.close_connection = True
            except Exception as e:  # a bug: answer 500 and log one line, not a traceback
                self.log(f"error: {self._line()} failed: {type(e).__name__}: {e}")
                if not self.responded:
                    self._answer_error(500, "The server failed on this request; its log says why.")
                self.close_connection = True

        def route(self):
            self.connection.settimeout(config.read_timeout)  # for writes; reads keep the deadline
            path = self.path.split("?", 1)[0].rstrip("/")
            if config.api_key is not None and not self._authorized():
                return self._refuse(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' "
                                         "with the server's --api-key.", code="invalid_api_key",
                                    headers={"WWW-Authenticate": "Bearer"})
            method = ROUTES.get(path)
            if method is None:
                return self._refuse(404, f"Unknown path {self.path[:200]}.", code="not_found")
            if self.command != method:
                return self._refuse(405, f"{path} takes {method}, not {self.command}.",
                                    code="method_not_allowed", headers={"Allow": method})
            if method == "GET":
                return self._json(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "created": 0, "owned_by": "local"}]})
            body = self._read_body()
            if body is not None:
                self._chat(body)

        def _authorized(self) -> bool:
            scheme, _, key = self.headers.get("Authorization", "").strip().partition(" ")
            # Header text is latin-1 decoded bytes; compare bytes in constant time.
            return scheme.lower() == "bearer" and hmac.compare_digest(
                key.strip().encode("latin-1", "replace"), config.api_key.encode("utf-8"))

        def _read_body(self) -> bytes | None:
            """The body by Content-Length, or None once an error has been answered."""
            if "Transfer-Encoding" in self.headers:  # before any 100 Continue: refuse unsent bodies
                return self._refuse(411, "Chunked request bodies are not supported; send Content-Length.",
                                    code="length_required")
            values = {v.strip() for v in self.headers.get_all("Content-Length") or ["0"]}
            length = values.pop() if len(values) == 1 else ""
            if not re.fullmatch(r"\d+", length):
                return self._refuse(400, "Content-Length must be one whole number of bytes.",
                                    code="invalid_content_length")
            length = int(length) if len(length) <= 18 else config.max_body + 1
            if length > config.max_body:
                return self._refuse(413, f"The request body has {length} bytes; this server takes at most "
                                         f"{config.max_body} (--max-body).", code="request_too_large")
            if self.headers.get("Expect", "").lower() == "100-continue":  # the checks passed: send it
                self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode())
            body = self.rfile.read(length)  # TimeoutError past the request's deadline
            self.connection.settimeout(config.read_timeout)
            if len(body) < length:
                return self._refuse(400, f"The request body ended after {len(body)} of {length} bytes.",
                                    code="incomplete_body")
            return body

        def _chat(self, body: bytes):
            try:
                messages, sampling, stop, stream, include_usage = parse_request(body, defaults, context)
                prompt_ids = assistant.prompt_ids(messages)
                if len(prompt_ids) + 1 > context:
                    raise RequestError(f"The prompt has {len(prompt_ids)} tokens; this model's context "
                                       f"is {context}.", param="messages", code="context_length_exceeded")
                sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, context - len(prompt_ids)))
            except RequestError as e:
                return self._error(e.status, str(e), param=e.param, code=e.code)
            info = TurnInfo()   # this request's own: others run at the same time
            pieces = assistant.reply_stream(messages, sampling, stop, prompt_ids=prompt_ids,
                                            cancelled=self._client_gone, info=info)
            if stream:
                return self._stream(pieces, include_usage, info)
            text = "".join(pieces)
            if info.cancelled:
                self.close_connection = True
                return self.log(f"client left; generation stopped after {info.completion_tokens} tokens")
            self._json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": info.finish_reason}],
                "usage": _usage(info), "safety": _safety(info)})

        def _client_gone(self) -> bool:
            """True once the client has closed its end or reset: asked between tokens. Data waiting
            (a pipelined request) is not a leave. A client that half-closes after sending counts
            as gone, as it does in most servers."""
            try:
                if hasattr(select, "poll"):  # poll has no FD_SETSIZE limit
                    poller = select.poll()
                    poller.register(self.connection, select.POLLIN)
                    if not poller.poll(0):
                        return False
                elif not select.select([self.connection], [], [], 0)[0]:
                    return False
                return not self.connection.recv(1, socket.MSG_PEEK)
            except (OSError, ValueError):
                return True

        def _stream(self, pieces, include_usage: bool, info: TurnInfo):
            self.responded = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model_name}

            def send(data):
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()

            def chunk(choices, **extra):
                send(json.dumps(dict(base, choices=choices, **extra)))

            try:
                chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
                for piece in pieces:
                    chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                if info.cancelled:
                    return self.log(f"client left mid-stream; generation stopped after "
                                    f"{info.completion_tokens} tokens")
                chunk([{"index": 0, "delta": {}, "finish_reason": info.finish_reason}], safety=_safety(info))
                if include_usage:
                    chunk([], usage=_usage(info))
                send("[DONE]")
            except (ConnectionError, TimeoutError):  # the client left or stopped reading
                pieces.close()  # stop generating, free the cache
                self.log("client disconnected mid-stream")
            except Exception as e:  # the model or screening failed: say so, then end the stream
                pieces.close()
                self.log(f"error: {self._line()} failed mid-stream: {type(e).__name__}: {e}")
                try:
                    send(json.dumps(_error_body(500, "Generation failed on the server; its log says why.")))
                    send("[DONE]")
                except OSError:
                    pass

        # --- answers ----------------------------------------------------------------------------

        def _json(self, status: int, obj: dict, headers: dict | None = None):
            self.responded = True
            if self.request_version == "HTTP/0.9":  # http.server would send the body alone
                self.request_version = "HTTP/1.0"
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status, message, param=None, code=None, headers=None):
            self._json(status, _error_body(status, message, param, code), headers)

        def _refuse(self, status, message, code=None, headers=None):
            """An error answered before the body was read. A request with a body closes the
            connection after it (the body would be read as the next request), draining it first
            (finish)."""
            if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
                self.close_connection = self.unread_input = True
            self._error(status, message, code=code, headers=headers)

        def _answer_error(self, status, message, code=None):
            """An error from an except clause: the socket may be past writing to."""
            self.close_connection = self.unread_input = True
            try:
                self._error(status, message, code=code)
            except OSError:
                pass

        def send_error(self, code, message=None, explain=None):
            """http.server's own errors (bad request line or version, headers too long) as JSON."""
            self.close_connection = self.unread_input = True
            reason = message or self.responses.get(code, ("Error",))[0]
            self._error(code, reason.rstrip(".") + ".", code=None)

        def parse_request(self):
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # no status line, no headers: not served
                return self.send_error(505, "HTTP/0.9 is not supported; send HTTP/1.1") or False
            return True

        def handle_expect_100(self):
            return True  # 100 Continue goes out from _read_body, once the key and the size pass

        def setup(self):
            super().setup()
            self.rfile.close()  # http.server's reader restarts its timeout at every read
            self.reader = _DeadlineReader(self.connection, config.read_timeout)
            self.rfile = io.BufferedReader(self.reader)
            self.unread_input = False

        def finish(self):
            super().finish()
            if self.unread_input:
                _linger(self.connection, min(LINGER_S, config.read_timeout))

        # --- log: one line per answer and per problem, on stderr --------------------------------

        def _line(self) -> str:
            return (getattr(self, "requestline", "") or "-")[:200]

        def log(self, text: str):
            print(f"[server] {text.translate(_CONTROL_CHARS)}", file=sys.stderr, flush=True)

        def log_request(self, code="-", size="-"):
            self.log(f"{self._line()} -> {int(code)}")

        def log_message(self, fmt, *args):
            self.log(fmt % args)

    return Handler


def _error_body(status: int, message: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "param": param, "code": code,
                      "type": "server_error" if status >= 500 else "invalid_request_error"}}


def _usage(info) -> dict:
    return {"prompt_tokens": info.prompt_tokens, "completion_tokens": info.completion_tokens,
            "total_tokens": info.prompt_tokens + info.completion_tokens}


def _safety(info) -> dict:
    return {**info.safety, "crisis_response": info.crisis, "screened": info.screened,
            "screen_reasons": info.screen_reasons}


class _DeadlineReader(io.RawIOBase):
    """A socket's read side where all reads share one deadline. A plain socket timeout restarts
    at every read, so a client sending a byte every few seconds could hold a thread for days."""

    def __init__(self, sock: socket.socket, seconds: float):
        self.sock, self.seconds, self.deadline = sock, seconds, time.monotonic() + seconds

    def restart(self):
        self.deadline = time.monotonic() + self.seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's read deadline has passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


def _linger(sock: socket.socket, seconds: float):
    """Close politely: send FIN, then read and drop what the client still sends, for a while.
    Closing with unread data makes the kernel reset the connection, and a reset can destroy the
    error answer before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.settimeout(deadline - time.monotonic())
            if not sock.recv(65536):
                return
    except OSError:
        pass


def _busy_response(max_connections: int) -> bytes:
    body = json.dumps(_error_body(503, f"The server is serving its maximum of {max_connections} "
                                       "connections (--max-connections); retry shortly.",
                                  code="server_busy")).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them. One over the cap gets a 503 from
    a short-lived thread (at most as many again); past that, the connection is closed unanswered."""
    daemon_threads = True
    request_queue_size = 64  # the listen backlog

    def __init__(self, config: ServerConfig, handler):
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.max_connections = config.max_connections
        self.slots = threading.BoundedSemaphore(config.max_connections)
        self.refusals = threading.BoundedSemaphore(config.max_connections)
        self.busy = _busy_response(config.max_connections)
        self.linger_s = min(LINGER_S, config.read_timeout)
        super().__init__((config.host, config.port), handler)

    def process_request(self, request, client_address):
        if self.slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)  # the thread releases the slot
            except BaseException:
                self.slots.release()
                raise
        elif self.refusals.acquire(blocking=False):
            threading.Thread(target=self._refuse, args=(request,), daemon=True).start()
        else:
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request):
        try:
            request.settimeout(self.linger_s)
            request.sendall(self.busy)
            _linger(request, self.linger_s)
        except OSError:
            pass
        finally:
            self.refusals.release()
            self.shutdown_request(request)

    def server_close(self):
        # The decoder first: requests still streaming, and any that reach it from now on, end
        # with an error. Then the handler threads get time to finish. Only then does the
        # assistant decode alone again: a request that arrived before that would otherwise
        # decode alone, on the model other threads are still using.
        decoder = getattr(self, "decoder", None)
        if decoder is not None:
            decoder.close()
        super().server_close()
        self.wait_for_handlers(EXIT_GRACE_S)
        if decoder is not None and self.assistant.decoder is decoder:
            self.assistant.decoder = None

    def wait_for_handlers(self, timeout: float) -> bool:
        """Waits, at most `timeout` seconds, until no handler thread runs (every connection slot
        is free again); True when none does. Handler threads are daemons, so nothing else waits
        for them, and a process that exits while one is still inside torch (the safety
        classifier, the tokenizer) can abort in torch's teardown."""
        deadline, taken = time.monotonic() + timeout, 0
        try:
            while taken < self.max_connections:
                if not self.slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    return False
                taken += 1
            return True
        finally:
            for _ in range(taken):
                self.slots.release()

    def handle_error(self, request, client_address):
        """What escapes a handler (it answers its own errors): one line, no traceback."""
        error = sys.exc_info()[1]
        print(f"[server] error: connection from {client_address[0]}: {type(error).__name__}: {error}",
              file=sys.stderr, flush=True)


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """A warning when the server is reachable beyond this machine with no key asked."""
    if api_key is not None or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return None
    except ValueError:
        pass
    return (f"warning: serving on {host}, beyond this machine, with no API key: anyone who can "
            f"reach it can use the model. Pass --api-key (or set {API_KEY_ENV}), or --host 127.0.0.1.")


def make_server(assistant, defaults: SamplingConfig, config: ServerConfig | None = None, *,
                decoder_thread: bool = True, **fields):
    """The server, bound and not yet serving. `fields` override config's (port=0: any free port).
    decoder_thread=False: the batch decoder gets no thread, and the caller runs
    server.decoder.run() (serve() does, on the main thread)."""
    config = replace(config or ServerConfig(), **fields)
    # The assistant decodes through a batch decoder for as long as the server runs.
    decoder = BatchDecoder(assistant.model, config.max_batch, config.max_context,
                           own_thread=decoder_thread)
    assistant.decoder = decoder
    try:
        server = BoundedServer(config, make_handler(assistant, defaults, config))
    except BaseException:
        decoder.close()
        assistant.decoder = None
        raise
    server.assistant, server.decoder = assistant, decoder
    return server


def serve(assistant, defaults: SamplingConfig, config: ServerConfig | None = None, **fields):
    """Serves until Ctrl-C. HTTP is answered on other threads; the model decodes on this one
    (the main thread: see model/batch_generation.py for why)."""
    config = replace(config or ServerConfig(), **fields)
    httpd = make_server(assistant, defaults, config, decoder_thread=False)
    host, port = httpd.server_address[:2]
    warning = exposure_warning(host, config.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {config.model_name} at http://{shown}:{port}/v1 (Ctrl-C stops)", flush=True)
    threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
    try:
        httpd.decoder.run()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()       # stop accepting
        httpd.server_close()   # requests in flight end with an error; their threads finish
