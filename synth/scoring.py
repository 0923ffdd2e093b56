"""Reading the expert evaluator's reply: a score from 0 to 100 and the feedback text.

The prompt asks for one JSON object, but models wrap it in prose or code fences, write
"Score: 72", "8/10" or "85%", or go past the range. In order of trust:

1. the first JSON object anywhere in the text that has a "score" key (or overall/total/final
   score); its value may be a number or a string like "72", "8/10", "85%";
2. "score" followed by a number in the prose ("Overall score: **72**/100", "a score of 8 out of
   10"); with several, an overall/total/final one wins, else the last;
3. a number "out of 100" or "/100" anywhere.

A fraction is scaled to 100 (8/10 -> 80) and the result clamped to [0, 100]. No score at all is
a BadReply, which the retry loop answers by asking the evaluator again.
"""

import json
import re
from dataclasses import dataclass

from synth.errors import BadReply

CRITERIA = ("accuracy", "empathy", "clarity", "appropriateness", "gaps")
SCORE_KEY = re.compile(r"^((overall|total|final)[ _-]?)?score$", re.IGNORECASE)
NUMBER = r"(-?\d+(?:\.\d+)?)\**\s*(?:%|(?:/|out of)\s*(\d+(?:\.\d+)?))?"
SCORE_IN_PROSE = re.compile(r"((?:overall|total|final)\W{0,3})?\bscore\b"
                            r"(?:\s*\(\d+\s*[-\u2013]\s*\d+\))?"  # a stated range: "score (0-100)"
                            r"(?:[^\d\-]|-(?=\s)){0,20}?" + NUMBER,
                            re.IGNORECASE)
OUT_OF_100 = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*100\b", re.IGNORECASE)


@dataclass
class Evaluation:
    score: float      # 0..100 (an int when the score is whole)
    feedback: str     # what the psychologist is shown for the rewrite


def _to_score(value: float, out_of: float | None = None) -> float:
    if out_of:  # "8/10" -> 80
        value = value * 100 / out_of
    value = min(100.0, max(0.0, value))
    return int(value) if value == int(value) else value


def _score_value(value) -> float | None:
    """A JSON "score" value as 0..100, or None: 72, 72.5, "72", "8/10", "85%"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return _to_score(float(value))
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + NUMBER + r"\s*", value)
        if match:
            return _to_score(float(match[1]), float(match[2]) if match[2] else None)
    return None


def _json_objects(text: str):
    """Every JSON object that starts at some '{' of the text, outermost first."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def _feedback_from_json(obj: dict) -> str:
    lines = [f"{key.capitalize()}: {obj[key]}" for key in CRITERIA if obj.get(key)]
    if obj.get("feedback"):
        lines.append(f"What to change: {obj['feedback']}")
    return "\n".join(lines)


def parse_evaluation(text: str) -> Evaluation:
    for obj in _json_objects(text):
        for key, value in obj.items():
            score = _score_value(value) if SCORE_KEY.match(str(key)) else None
            if score is not None:
                return Evaluation(score, _feedback_from_json(obj) or text.strip())

    matches = list(SCORE_IN_PROSE.finditer(text))
    if matches:
        overall = [m for m in matches if m[1]]
        match = (overall or matches)[-1]
        return Evaluation(_to_score(float(match[2]), float(match[3]) if match[3] else None),
                          text.strip())

    match = OUT_OF_100.search(text)
    if match:
        return Evaluation(_to_score(float(match[1])), text.strip())
    raise BadReply("the evaluator's reply holds no score")
