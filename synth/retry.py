"""Retries with exponential backoff and jitter, done here and visibly (the openai client's own
retries are switched off with max_retries=0 so there is exactly one retry policy).

Worth retrying: 408/409/429 and 5xx answers, timeouts, dropped connections, a body that is not
JSON, and a reply we could not use (errors.BadReply). Not worth it: 401/403/404 and other 4xx,
which fail the same way every time, and a refused connection: nothing listens at that address,
so asking again only burns minutes of backoff (a connection dropped mid-request is retried).
"""

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import openai

from synth.errors import BadReply

T = TypeVar("T")

RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx


@dataclass
class RetryPolicy:
    max_retries: int = 6       # attempts after the first one
    base_delay: float = 1.0    # seconds before the first retry; doubles each time
    max_delay: float = 60.0    # no single wait is longer than this


def is_refused(error: BaseException) -> bool:
    """True when the connection was refused: openai's APIConnectionError wraps httpx's
    ConnectError, which wraps the socket's ConnectionRefusedError somewhere down the chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConnectionRefusedError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def is_retryable(error: BaseException) -> bool:
    if is_refused(error):
        return False
    if isinstance(error, (openai.APIConnectionError, json.JSONDecodeError, BadReply)):
        return True  # APITimeoutError is an APIConnectionError
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return False


def backoff_delay(attempt: int, policy: RetryPolicy, error: BaseException | None = None,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0-based).

    Exponential (base * 2**attempt, capped), with "equal jitter": half the delay is fixed and
    half is random, so many workers that failed together do not all come back together. A
    Retry-After header from the server is honoured when it asks for longer.
    """
    delay = min(policy.max_delay, policy.base_delay * 2 ** attempt)
    delay = delay / 2 + rand() * delay / 2
    response = getattr(error, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    try:
        delay = max(delay, min(policy.max_delay, float(retry_after)))
    except (TypeError, ValueError):
        pass  # no header, or an HTTP date: the computed delay will do
    return delay


def describe(error: BaseException) -> str:
    """A short name for an error, for the retry log line."""
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}"
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection refused" if is_refused(error) else "connection dropped"
    if isinstance(error, json.JSONDecodeError):
        return "malformed JSON body"
    return str(error) or type(error).__name__


class Cancelled(Exception):
    """The run is stopping (a fatal error elsewhere, or Ctrl-C); no more attempts are made."""


class DeadlineReached(Cancelled):
    """--deadline has passed: no new request starts, so the row is left for a rerun."""


def call_with_retries(call: Callable[[], T], policy: RetryPolicy, *, what: str,
                      log: Callable[[str], None], stop: threading.Event | None = None,
                      time_left: Callable[[], float] | None = None) -> T:
    """call(), retried on retryable errors; the last error is raised when retries run out.

    `stop` cuts the waiting short: once it is set, no further attempt is made. `time_left()`
    is the seconds before the run's deadline: no attempt starts once it is 0, and a retry whose
    backoff would end after it is not waited for.
    """
    for attempt in range(policy.max_retries + 1):
        if stop is not None and stop.is_set():
            raise Cancelled()
        if time_left is not None and time_left() <= 0:
            raise DeadlineReached()
        try:
            return call()
        except Exception as error:
            if not is_retryable(error) or attempt == policy.max_retries:
                raise
            delay = backoff_delay(attempt, policy, error)
            if time_left is not None and delay >= time_left():
                raise DeadlineReached() from error
            log(f"{what}: {describe(error)}; retry {attempt + 1}/{policy.max_retries} "
                f"in {delay:.1f}s")
            if stop is not None:
                stop.wait(delay)  # returns early when the run is stopping
            else:
                time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")
