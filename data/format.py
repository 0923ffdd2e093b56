"""Rows -> token ids with a loss mask.

Each row becomes one Example: the prompt (instruction + the person's message, in a template)
followed by the reply and the token that closes it. Only the reply is learned:

    input_ids:  [ prompt ............ | reply ........... | close ]
    labels:     [ -100 -100 ... -100  | reply ........... | close ]

Labels sit at the same positions as input_ids; the loss shifts them by one (logits at position
t are scored against labels[t + 1]), so the label of the first reply token is predicted from
the last prompt token. -100 is the index torch.nn.functional.cross_entropy ignores. The closing
token (EOS for Alpaca, the end-of-turn token for chat formats) carries a label so the model
learns to stop.

Prompt and reply are tokenized separately and concatenated, so the boundary between masked and
learned tokens is exact; generation feeds the same prompt ids and reads what follows.

Templates (both go through model.tokenizer.chat, so training sees the very ids generation will feed):
    "alpaca"  the seed's Alpaca prompt (model.tokenizer.chat's "alpaca" format) with the row's instruction
              and input; the reply is the row's output, closed by EOS.
    "chat"    the model's own chat format as model.tokenizer.chat detects it (Llama-3 headers, ChatML):
              system = instruction, user = input, assistant = output, closed by the format's
              end-of-turn ids. A tokenizer with no chat tokens falls back to Alpaca.

Before tokenizing, a field longer than data.cap.field_char_limit(max_len) characters (128 per
token, far more than max_len tokens can span) is cut on the side truncation would throw away,
so a 1 MB field is never tokenized whole; the ids kept are the same (see data/cap.py).

Rows longer than max_len are truncated and counted:
    - If the prompt fits with room for at least MIN_RESPONSE_TOKENS of the reply, the reply is cut
      from its end (the closing token goes too: that reply did not end there).
    - Otherwise the prompt is cut from its left (keeping its first token when that is the BOS the
      tokenizer always starts with), so the end of the prompt, which holds the end of the
      question and the assistant header the reply must follow, stays next to the first
      MIN_RESPONSE_TOKENS of the reply.
"""

import sys
from dataclasses import dataclass

from data.cap import cap_fields, field_char_limit
from model.tokenizer.chat import get_chat_format
from model.errors import UserError
from model.loss import IGNORE_INDEX  # labels with this value add nothing to the loss

TEMPLATES = ("alpaca", "chat")
MIN_RESPONSE_TOKENS = 16       # reply tokens a truncated row keeps at the least
MIN_MAX_LEN = 8                # below this no prompt and reply fit together


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]          # IGNORE_INDEX on prompt tokens, = input_ids on reply + close
    truncated: bool = False

    @property
    def n_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class FormatStats:
    rows: int = 0
    truncated: int = 0         # examples cut to max_len (either way)
    prompt_cut: int = 0        # of those, examples whose prompt was cut from the left
    tokens: int = 0            # input tokens in all examples
    target_tokens: int = 0     # tokens that carry a label
    longest: int = 0           # longest row before truncation (after the field cut), in tokens
    capped: int = 0            # rows with a field cut to field_char_limit(max_len) characters
    max_len: int = 0

    def summary(self) -> str:
        text = (f"{self.rows} examples, {self.tokens} tokens ({self.target_tokens} learned), "
                f"longest row {self.longest} tokens")
        if self.truncated:
            text += (f", {self.truncated} truncated to --max-len {self.max_len}"
                     f" ({self.prompt_cut} of them with the prompt cut)")
        if self.capped:
            text += (f", {self.capped} with a field over {field_char_limit(self.max_len)} "
                     "characters cut before tokenizing")
        return text


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise UserError(f"--template must be one of {', '.join(TEMPLATES)}, got {template!r}.")


def chat_format_for(tokenizer, template: str):
    """The model.tokenizer.chat format that a template uses."""
    check_template(template)
    return get_chat_format(tokenizer, "alpaca" if template == "alpaca" else None)


def encode_row(row, tokenizer, template: str, chat=None,
               max_chars: int | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids + closing ids) for one row, before truncation to max_len; with
    max_chars, each field is first cut to that many characters (data.cap.cap_fields)."""
    prompt, reply, _ = _encode(row, tokenizer, chat or chat_format_for(tokenizer, template),
                               max_chars)
    return prompt, reply


def _encode(row, tokenizer, chat, max_chars: int | None) -> tuple[list[int], list[int], bool]:
    """encode_row, plus whether a field was cut."""
    instruction, text_in, text_out, cut = row.instruction, row.input, row.output, False
    if max_chars is not None:
        instruction, text_in, text_out, cut = cap_fields(instruction, text_in, text_out, max_chars)
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": text_in}]
    prompt = chat.encode_prompt(messages, add_generation_prompt=True)
    reply = tokenizer.encode(text_out) + list(chat.end_of_turn_ids())
    return prompt, reply, cut


def fit_to_length(prompt: list[int], reply: list[int], max_len: int,
                  keep_first: bool = False) -> tuple[list[int], list[int], bool]:
    """Cut (prompt, reply) to at most max_len tokens together; see the module docstring.
    keep_first: a cut prompt keeps its first token (the BOS)."""
    if len(prompt) + len(reply) <= max_len:
        return prompt, reply, False
    keep = min(len(reply), MIN_RESPONSE_TOKENS, max_len // 2)
    if len(prompt) + keep <= max_len:
        return prompt, reply[: max_len - len(prompt)], True  # cut the end of the reply
    room = max_len - keep
    if keep_first:
        prompt = prompt[:1] + prompt[len(prompt) - (room - 1):]  # BOS + the end of the prompt
    else:
        prompt = prompt[len(prompt) - room:]
    return prompt, reply[:keep], True


def _to_example(prompt: list[int], reply: list[int], max_len: int,
                tokenizer) -> tuple[Example, bool]:
    """(the Example, whether its prompt was cut) for encoded parts, truncated to max_len."""
    starts_with_bos = tokenizer.add_bos and prompt[:1] == [tokenizer.bos_id]
    cut_prompt, cut_reply, truncated = fit_to_length(prompt, reply, max_len, starts_with_bos)
    example = Example(input_ids=cut_prompt + cut_reply,
                      labels=[IGNORE_INDEX] * len(cut_prompt) + list(cut_reply),
                      truncated=truncated)
    return example, len(cut_prompt) < len(prompt)


def _check_max_len(max_len: int) -> None:
    if max_len < MIN_MAX_LEN:
        raise UserError(f"--max-len must be at least {MIN_MAX_LEN}, got {max_len}.")


def format_row(row, tokenizer, template: str, max_len: int, chat=None) -> Example:
    """One row as an Example of at most max_len tokens; pass `chat` to reuse a chat format."""
    _check_max_len(max_len)
    prompt, reply = encode_row(row, tokenizer, template, chat, field_char_limit(max_len))
    example, _ = _to_example(prompt, reply, max_len, tokenizer)
    return example


def build_examples(rows, tokenizer, template: str, max_len: int,
                   progress: bool = True) -> tuple[list[Example], FormatStats]:
    """Every row as an Example, in order, with counts of tokens and truncations."""
    _check_max_len(max_len)
    chat = chat_format_for(tokenizer, template)
    stats = FormatStats(max_len=max_len)
    max_chars = field_char_limit(max_len)
    examples = []
    for row in _progress(rows, progress):
        prompt, reply, capped = _encode(row, tokenizer, chat, max_chars)
        example, prompt_cut = _to_example(prompt, reply, max_len, tokenizer)
        stats.rows += 1
        stats.capped += capped
        stats.longest = max(stats.longest, len(prompt) + len(reply))
        stats.truncated += example.truncated
        stats.prompt_cut += prompt_cut
        stats.tokens += len(example.input_ids)
        stats.target_tokens += example.n_targets
        examples.append(example)
    return examples, stats


def _progress(rows, enabled: bool):
    """rows, wrapped in a tqdm bar on stderr when asked for and tqdm is installed."""
    if not enabled:
        return rows
    try:
        from tqdm import tqdm
    except ImportError:
        return rows
    return tqdm(rows, desc="tokenizing", unit="row", file=sys.stderr, leave=False)
