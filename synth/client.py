"""One chat call to any OpenAI-compatible server: key and URL resolution, retries, usage.

The refusals that no retry can fix become SynthError with one sentence (the CLI prints it and
exits with status 2): no key, a rejected key (401/403), an unknown model or path (404), nothing
listening at the URL (connection refused), and too many failed requests in a row (breaker.py).
"""

import dataclasses
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import openai

from synth.breaker import CircuitBreaker
from synth.cost import UsageMeter
from synth.errors import BadReply, SynthError
from synth.retry import RetryPolicy, call_with_retries, describe, is_refused

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
T = TypeVar("T")

LOCAL_PLACEHOLDER_KEY = "no-key-needed-locally"  # the client insists on some key
# Refusals that end the run at once (chat() turns each into a SynthError).
FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


def is_local(base_url: str) -> bool:
    return urlsplit(base_url).hostname in LOCAL_HOSTS


@dataclass
class Connection:
    base_url: str
    api_key: str
    timeout: float = 120.0   # seconds for one request, before it counts as timed out
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, **kwargs) -> "Connection":
        """Flags first, then OPENAI_BASE_URL / OPENAI_API_KEY; a local server needs no key."""
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not is_local(base_url):
                raise SynthError(f"no API key for {base_url}: pass --api-key or set "
                                 "OPENAI_API_KEY (a --base-url on localhost needs none).")
            api_key = LOCAL_PLACEHOLDER_KEY
        return cls(base_url=base_url, api_key=api_key, **kwargs)

    @property
    def local(self) -> bool:
        return is_local(self.base_url)


@dataclass
class Sampling:
    """How to sample one reply; every field is a CLI flag."""

    model: str
    temperature: float
    max_tokens: int
    seed: int | None


class ChatClient:
    """chat(messages, sampling) -> the reply text, retried; tokens go to `usage`.

    One instance is shared by all worker threads (the underlying HTTP client is thread-safe).
    Setting `stop` makes every worker give up at its next attempt. Every attempt's outcome goes
    to `breaker`; `time_left()` (seconds before --deadline) stops new attempts once it is 0.
    """

    def __init__(self, connection: Connection, usage: UsageMeter, log: Callable[[str], None],
                 *, breaker: CircuitBreaker | None = None,
                 time_left: Callable[[], float] | None = None):
        self.connection = connection
        self.usage = usage
        self.log = log
        self.stop = threading.Event()
        self.stopped_by: SynthError | None = None  # why stop was set by a worker (halt)
        self.breaker = breaker or CircuitBreaker(0)
        self.time_left = time_left
        # max_retries=0: the openai client's own retries would multiply ours (retry.py).
        self._client = openai.OpenAI(base_url=connection.base_url, api_key=connection.api_key,
                                     timeout=connection.timeout, max_retries=0)

    def halt(self, error: SynthError) -> SynthError:
        """Stop every worker for `error` and return it to raise. Workers cancelled by the stop
        may report back before this one does; the runner then raises `stopped_by` instead."""
        if self.stopped_by is None:
            self.stopped_by = error
        self.stop.set()
        return error

    def _once(self, messages: list[dict], sampling: Sampling, parse: Callable[[str], T]) -> T:
        reply = self._client.chat.completions.create(
            model=sampling.model, messages=messages, temperature=sampling.temperature,
            max_tokens=sampling.max_tokens, seed=sampling.seed)
        usage = getattr(reply, "usage", None)
        if usage is not None:  # counted even if the text is unusable: it was paid for
            self.usage.add(sampling.model, usage.prompt_tokens or 0, usage.completion_tokens or 0)
        choices = getattr(reply, "choices", None)
        if not choices or choices[0].message is None:
            raise BadReply("reply without a message")
        text = (choices[0].message.content or "").strip()
        if not text:
            raise BadReply("empty reply")
        return parse(text)  # inside the retry loop: a reply parse() rejects is asked for again

    def chat(self, messages: list[dict], sampling: Sampling, *, what: str,
             parse: Callable[[str], T] = str) -> T:
        """parse(reply text), retried; `what` names the row and step in retry log lines.

        parse may raise BadReply (the evaluator gave no score, say) to have the request made
        again, under the same retry budget as a dropped connection.
        """
        url = self.connection.base_url
        attempts = itertools.count()

        def attempt():
            # A retry after an unusable reply must not ask for the very same sample again.
            n = next(attempts)
            seeded = sampling if sampling.seed is None or n == 0 else \
                dataclasses.replace(sampling, seed=sampling.seed + n)
            try:
                result = self._once(messages, seeded, parse)
            except FATAL:
                raise  # ends the run below; says nothing about the server's health
            except Exception as error:
                if is_refused(error):
                    raise
                if self.breaker.failure():  # the other workers make no further attempt
                    raise self.halt(SynthError(
                        f"stopped after {self.breaker.limit} failed requests in a row to {url} "
                        f"(the last: {describe(error)}; --max-consecutive-failures); the rows "
                        "written so far are kept, so rerun the same command once the server "
                        "answers.")) from None
                raise
            self.breaker.success()
            return result

        try:
            return call_with_retries(attempt,
                                     self.connection.retry, what=what, log=self.log,
                                     stop=self.stop, time_left=self.time_left)
        except openai.APIConnectionError as error:
            if is_refused(error):
                raise self.halt(SynthError(f"nothing listening at {url} (connection refused); "
                                           "start the server or fix --base-url, then "
                                           "rerun.")) from None
            raise
        except openai.AuthenticationError:
            raise SynthError(f"the server at {url} rejected the API key (HTTP 401); check "
                             "--api-key or OPENAI_API_KEY.") from None
        except openai.PermissionDeniedError:
            raise SynthError(f"the server at {url} refused the request (HTTP 403); check that "
                             f"the API key may use model {sampling.model!r}.") from None
        except openai.NotFoundError:
            raise SynthError(f"model {sampling.model!r} was not found at {url} (HTTP 404); "
                             "check --model / --evaluator-model and that --base-url ends in "
                             "/v1.") from None
