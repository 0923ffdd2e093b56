"""Over-long row fields are cut before they are tokenized, with the kept ids unchanged.

A 1 MB field would otherwise be tokenized in full (about 250,000 ids, several MB of Python ints,
all of it at once) only for all but max_len of those ids to be thrown away by truncation.

Why a character bound is safe: no token of the vocabularies we load covers more than
CHARS_PER_TOKEN characters (Llama-3's longest token is 128 bytes, a run of spaces; SmolLM2's
is 81), and a character is at least one byte. So max_len tokens never span more than
CHARS_PER_TOKEN * max_len characters, and a field cut to field_char_limit(max_len) still
tokenizes to at least max_len ids: truncation makes the same choices it made on the whole field.

Each field keeps the side that truncation (data/format.py) keeps:

    output               its start   (a long reply is cut from its end)
    instruction, input   its end     (a long prompt is cut from its left)

The cut lands where the tokenizer's piece-cutting regex (Llama-3's and GPT-2's patterns) also
breaks, so the kept ids are exactly those of tokenizing the whole field (tests/test_data_cap.py
checks 1 MB fields against full tokenization, for SmolLM2 and Llama-3):

    keeping the start   just before a space that follows a non-space      "word| next"
    keeping the end     just after a newline, before a non-space          "line\n|Next"
                        else just after a space, before a non-space       "word |next"
                        (then the first word's ids may differ: it loses its leading space;
                        it is about CHARS_PER_TOKEN * max_len characters from the end, far
                        past what truncation keeps)

The break is searched for within SLACK_CHARS of the limit. A field with none there (thousands of
characters without a space) is cut at the limit itself; then ids next to the cut may differ,
which for such text, too, lie far past the max_len ids that truncation keeps.
"""

CHARS_PER_TOKEN = 128   # the longest token we know (Llama-3: 128 spaces), in characters
SLACK_CHARS = 2048      # room, below the limit, to find a break to cut at


def field_char_limit(max_len: int) -> int:
    """The longest field, in characters, that max_len tokens could need; see the docstring."""
    return CHARS_PER_TOKEN * max_len + SLACK_CHARS


def keep_start(text: str, limit: int) -> str:
    """text cut to at most `limit` characters from its end, just before a word when possible."""
    if len(text) <= limit:
        return text
    for j in range(limit, max(limit - SLACK_CHARS, 0), -1):  # text[j] exists: len(text) > limit
        if text[j] == " " and not text[j - 1].isspace():
            return text[:j]
    return text[:limit]


def keep_end(text: str, limit: int) -> str:
    """text cut to at most `limit` characters from its start, at a line (else word) start."""
    n = len(text)
    if n <= limit:
        return text
    start = n - limit
    for breaker in ("\n", " "):
        for j in range(start + 1, min(start + SLACK_CHARS, n)):
            if text[j - 1] == breaker and not text[j].isspace():
                return text[j:]
    return text[start:]


def cap_fields(instruction: str, input: str, output: str,
               limit: int) -> tuple[str, str, str, bool]:
    """(instruction, input, output, whether any was cut), each cut to `limit` characters on the
    side truncation throws away."""
    cut = (keep_end(instruction, limit), keep_end(input, limit), keep_start(output, limit))
    return (*cut, cut != (instruction, input, output))
