"""Small text helpers shared by detection and output screening.

Patterns are written in lower case against a normalised copy of the text. Normalising keeps one
character per input character, so a match's (start, end) also points into the original text and
the phrase can be reported as the person wrote it.
"""

import re

# Curly quotes and dashes from phones and word processors, mapped to their plain forms.
_PLAIN = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "-", "\u00a0": " "})

# Where a clause ends: punctuation, a line break, or a "but" that turns the sentence around
# ("I'd never hurt myself, but I want to die" has two clauses).
_CLAUSE_BREAK = re.compile(r"[.!?;:,\n]|\bbut\b|\bthough\b|\bexcept\b")

# A negation right in front of a phrase: "I would never ...", "I'm not going to ...",
# "I don't want to ...". Only a few filler words may sit between the negation and the phrase,
# so "I can't stop thinking about ..." or "I don't know why I want to ..." are NOT negations.
# "can't" and "shouldn't" are left out on purpose: "I can't kill myself, I'm too scared" and
# "why shouldn't I kill myself" still carry the risk.
_FILLER = (r"(?:going|gonna|to|want|wanna|ever|really|actually|be|would|will|i|i'd|i'll|i'm|"
           r"plan|planning|intend|try|trying|even|thinking|think|about|of|way|do|that|it|so|"
           r"again|and)")
_NEGATED_TAIL = re.compile(
    r"(?:\bnever|\bnot|\bdon't|\bdont|\bdidn't|\bdidnt|\bwon't|\bwont|\bwouldn't|\bwouldnt|\bno)"
    r"(?:\s+" + _FILLER + r"){0,4}\s*$")
_QUESTION_WHY = re.compile(r"\bwhy\b")


def normalize(text: str) -> str:
    """Lower case with plain quotes, exactly as long as `text`."""
    plain = text.translate(_PLAIN)
    lowered = plain.lower()
    if len(lowered) == len(plain):
        return lowered
    # A few characters grow when lower-cased (e.g. Turkish dotted I); keep those as they are.
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in plain)


# How far back a clause is looked for: far more than any clause people write, and it keeps the
# checks of a message with thousands of matches linear in its length.
_CLAUSE_LOOKBACK = 400


def clause_before(text: str, start: int) -> str:
    """The part of the clause that comes before position `start` (at most _CLAUSE_LOOKBACK
    characters)."""
    head = text[max(0, start - _CLAUSE_LOOKBACK):start]
    cut = 0
    for m in _CLAUSE_BREAK.finditer(head):
        cut = m.end()
    return head[cut:]


def is_negated(text: str, start: int) -> bool:
    """True when the phrase starting at `start` is directly negated ("I would never ...")."""
    before = clause_before(text, start)
    if _QUESTION_WHY.search(before):  # "why wouldn't I just ..." asks, it does not deny
        return False
    return _NEGATED_TAIL.search(before) is not None


def sentence_around(text: str, start: int, end: int) -> str:
    """The sentence that holds text[start:end] (used to check for question marks)."""
    left = max(text.rfind(c, 0, start) for c in ".!?\n") + 1
    rights = [i for i in (text.find(c, end) for c in ".!?\n") if i != -1]
    right = min(rights) + 1 if rights else len(text)
    return text[left:right]


_SENTENCE_END = re.compile(r"[.!?\n]\s*")


def windows(text: str, size: int, overlap: int) -> list[str]:
    """`text` as consecutive pieces of at most about `size` characters that end at a sentence
    end where one is near, each starting `overlap` characters before the previous one ended (so
    a phrase across a boundary is whole in one of them). Nothing is left out."""
    pieces, start = [], 0
    while True:
        end = min(start + size, len(text))
        if end < len(text):
            breaks = [m.end() for m in _SENTENCE_END.finditer(text, start + size // 2, end)]
            end = breaks[-1] if breaks else end
        pieces.append(text[start:end])
        if end >= len(text):
            return pieces
        start = max(end - overlap, start + 1)
