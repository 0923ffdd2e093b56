"""A chat-completions request body, checked field by field: what server.py accepts.

    bytes --json--> {"messages", "temperature", "top_p", "max_tokens" | "max_completion_tokens",
                     "stop", "seed", "n", "stream", "stream_options"}
          --parse_request--> (messages, SamplingConfig, stop strings, stream, include_usage)

Anything else raises RequestError, which the server answers as a 400 in OpenAI's error shape,
naming the field in "param". Unknown fields ("model", "user", ...) are ignored, as OpenAI-
compatible servers do. The sampler copes with every value let through (model/generation.py).
"""

import json
from dataclasses import replace

from model.errors import UserError
from model.generation import SamplingConfig

ROLES = {"system", "user", "assistant", "developer"}


class RequestError(UserError):
    """Bad input from an HTTP client: the project's UserError, plus what the 400 reply carries
    (the field in "param", OpenAI's error "code", the HTTP status)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def _text(value, param: str) -> str:
    """A string from the request that the tokenizer can encode (no unpaired surrogates)."""
    if not isinstance(value, str):
        raise RequestError(f"'{param}' must be a string.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"'{param}' holds an unpaired surrogate (\\ud800-\\udfff); send valid "
                           "Unicode.", param=param) from None
    return value


def parse_request(body: bytes, defaults: SamplingConfig, context: int) -> tuple[list[dict], SamplingConfig, list[str], bool, bool]:
    """Validates a chat-completions body -> (messages, sampling, stop strings, stream, include_usage)."""
    try:
        req = json.loads(body or b"")
    except (ValueError, RecursionError):  # bad JSON or encoding, a 5,000-digit number, [[[[...
        raise RequestError("The request body is not valid JSON.") from None
    if not isinstance(req, dict):
        raise RequestError("The request body must be a JSON object.")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list.", param="messages")
    clean = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of system, developer, user, "
                               f"assistant; got {json.dumps(role)[:40]}.", param=f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = []
            for j, part in enumerate(content):
                param = f"messages[{i}].content[{j}]"
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise RequestError(f"'{param}' must be {{\"type\": \"text\", \"text\": ...}}: "
                                       "this server reads text only.", param=param)
                parts.append(_text(part.get("text"), f"{param}.text"))
            content = "".join(parts)
        clean.append({"role": "system" if role == "developer" else role,
                      "content": _text(content, f"messages[{i}].content")})
    if req.get("n", 1) != 1:
        raise RequestError("Only n=1 is supported.", param="n")

    def number(key, kind, lo, hi, default):
        value = req.get(key)
        if value is None:
            return default
        # `not lo <= value <= hi` is also true for NaN, which json.loads accepts.
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise RequestError(f"'{key}' must be a number between {lo} and {hi}.", param=key)
        return kind(value)

    def flag(key, container, name):
        value = container.get(key)
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"'{name}' must be true or false.", param=name)
        return bool(value)

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
    stop = [_text(s, "stop") for s in stop]
    stream = flag("stream", req, "stream")
    options = req.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", param="stream_options")
    include_usage = flag("include_usage", options or {}, "stream_options.include_usage")
    return clean, sampling, stop, stream, include_usage
