"""One turn of the support assistant, as chat (generate.py) and the HTTP server both run it.

    conversation --safety.guard_reply--> crisis? -> the crisis response (the model is not asked)
                 --chat format--> prompt ids --model, token by token--> text
                 --held back a sentence at a time, screened with safety.screen_output-->
                 the user sees only text that passed; a failing sentence stops the model and the
                 safe replacement is shown instead.
"""

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import safety
from model.generation import GenerationResult, SamplingConfig, TextStream, generate_stream

# Text is released to the user at these boundaries, after screening the answer so far.
SENTENCE_END = re.compile(r"[.!?:;]\s|\n")


@dataclass
class TurnInfo:
    """What happened in the last turn: for logs, the server's extra field and usage counts."""
    safety: dict = field(default_factory=dict)   # safety.detect on the conversation
    crisis: bool = False                         # the crisis response was given
    screened: bool = False                       # the model's text was replaced
    screen_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"                  # "stop" or "length"
    seconds: float = 0.0
    cancelled: bool = False                      # `cancelled()` said stop: the reply is cut short
    replacement: str = ""                        # the safe text shown instead, when screened


class Assistant:
    """decoder: a model.batch_generation.BatchDecoder that the server shares between its
    requests; without one, each turn decodes alone with generate_stream."""

    def __init__(self, model, tokenizer, chat_format, locale: str = "US",
                 system_prompt: str | None = safety.SYSTEM_PROMPT, decoder=None):
        self.model, self.tokenizer, self.chat_format = model, tokenizer, chat_format
        self.locale = locale
        self.system_prompt = system_prompt
        self.decoder = decoder
        self.last = TurnInfo()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.system_prompt}] + list(messages)
        return self.chat_format.encode_prompt(messages, add_generation_prompt=True)

    def reply(self, messages: list[dict], sampling: SamplingConfig, stop_strings=()) -> str:
        return "".join(self.reply_stream(messages, sampling, stop_strings))

    def reply_stream(self, messages: list[dict], sampling: SamplingConfig,
                     stop_strings=(), prompt_ids: list[int] | None = None,
                     cancelled: Callable[[], bool] | None = None,
                     info: TurnInfo | None = None) -> Iterator[str]:
        """Yields the reply in screened pieces; `info` (default: a new `self.last`) describes
        the turn afterwards: concurrent turns each pass their own. `cancelled` is asked after
        every token (the server passes "has the client left?"): when it says True, the model
        stops and the turn ends without further text."""
        info = self.last = info if info is not None else TurnInfo()
        start = time.perf_counter()
        crisis_text, result = safety.guard_reply(messages, locale=self.locale)
        info.safety = result.to_dict()
        if crisis_text is not None:
            info.crisis = True
            info.seconds = time.perf_counter() - start
            yield crisis_text
            return

        ids = prompt_ids if prompt_ids is not None else self.prompt_ids(messages)
        gen = GenerationResult([], False, len(ids))
        stream = TextStream(self.tokenizer)
        shown, held = "", ""
        if self.decoder is not None:
            tokens = self.decoder.stream(ids, sampling, self.chat_format.stop_ids, gen, cancelled)
        else:
            tokens = generate_stream(self.model, ids, sampling, self.chat_format.stop_ids, gen)
        try:
            for token in tokens:
                if cancelled is not None and cancelled():
                    info.cancelled = True
                    break
                held += stream.push(token)
                held, hit_stop = _cut_at_stop(held, stop_strings)
                if hit_stop or SENTENCE_END.search(held):
                    # Keep back an end that may be the start of a stop string ("\n" of "\n\n"):
                    # once released, text cannot be taken back if the stop string completes.
                    ready, held = (held, "") if hit_stop else _hold_stop_prefix(held, stop_strings)
                    if ready:
                        piece = self._screen(messages, shown, ready, info)
                        if piece is None:
                            break
                        shown += piece
                        yield piece
                if hit_stop:
                    gen.stopped = True
                    break
            else:
                if not gen.ids and not gen.stopped and cancelled is not None and cancelled():
                    info.cancelled = True   # left while waiting for a batch slot: nothing made
                held, _ = _cut_at_stop(held + stream.flush(), stop_strings)
                if held and not info.screened:
                    piece = self._screen(messages, shown, held, info)
                    if piece is not None:
                        yield piece
        finally:
            tokens.close()  # frees the KV cache or slot now (also when the caller stops early or fails)
        if info.screened:
            yield ("\n\n" if shown else "") + info.replacement
        info.prompt_tokens = len(ids)
        info.completion_tokens = len(gen.ids)
        info.finish_reason = "stop" if gen.stopped or info.screened else "length"
        info.seconds = time.perf_counter() - start

    def _screen(self, messages, shown: str, held: str, info: TurnInfo) -> str | None:
        """The held text if the answer so far stays safe with it, else None (and remember why)."""
        check = safety.screen_output(shown + held, conversation=messages, locale=self.locale)
        if check.safe:
            return held
        info.screened = True
        info.screen_reasons = list(check.reasons)
        info.replacement = check.text
        return None


def _cut_at_stop(text: str, stop_strings) -> tuple[str, bool]:
    """The text before the earliest stop string in it, and whether there was one."""
    cuts = [text.index(s) for s in stop_strings if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def _hold_stop_prefix(text: str, stop_strings) -> tuple[str, str]:
    """(text to release now, the longest end of it that begins some stop string)."""
    longest = max((len(s) for s in stop_strings if s), default=1)
    for k in range(min(len(text), longest - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop_strings if s):
            return text[:-k], text[-k:]
    return text, ""
