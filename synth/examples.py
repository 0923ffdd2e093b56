"""Worked examples for the evaluator (`refine --evaluator-examples FILE`), shown as few-shot turns.

A small model copies the shape of a reply it has just seen far more reliably than it follows a
description of one, so each evaluate request can show a few finished reviews first:

    [system, user: example 1, assistant: verdict 1, ..., user: the real answer to judge]

The file is JSON Lines, one example a line, with exactly these keys:

    {"patient": "the patient's message", "answer": "the answer being judged",
     "verdict": {"score": 30, "feedback": "..."}}

"verdict" is the evaluator's reply as it should be written: a JSON object (sent as compact
JSON) or a string. It must hold a score that synth/scoring.py reads, or the example would teach
the model a reply that synth rejects. Blank lines are skipped; any other bad line is a SynthError
naming FILE:LINE.
"""

import json
import os
from dataclasses import dataclass

from model.jsonl import BadLine, jsonl_objects
from synth.errors import BadReply, SynthError
from synth.scoring import parse_evaluation

KEYS = ("patient", "answer", "verdict")


@dataclass
class WorkedExample:
    patient: str   # the patient's message
    answer: str    # the answer the evaluator judges
    verdict: str   # the evaluator's reply, exactly as it is sent


def _example(where: str, row) -> WorkedExample:
    if not isinstance(row, dict):
        raise SynthError(f"{where} is not a JSON object; write each example as "
                         '{"patient": ..., "answer": ..., "verdict": ...}.')
    missing = [key for key in KEYS if key not in row]
    unknown = sorted(set(row) - set(KEYS))
    if missing or unknown:
        problem = f"lacks {', '.join(missing)}" if missing else \
            f"has unknown keys {', '.join(unknown)}"
        raise SynthError(f"{where} {problem}; each example has exactly the keys "
                         "patient, answer and verdict.")
    for key in ("patient", "answer"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise SynthError(f"{where}: {key!r} must be non-empty text.")
    verdict = row["verdict"]
    if isinstance(verdict, dict):
        verdict = json.dumps(verdict, ensure_ascii=False)
    if not isinstance(verdict, str) or not verdict.strip():
        raise SynthError(f"{where}: 'verdict' must be a JSON object or non-empty text, the "
                         "evaluator's reply.")
    try:
        parse_evaluation(verdict)
    except BadReply:
        raise SynthError(f"{where}: the verdict holds no score synth can read; give it one, "
                         'e.g. {"score": 70, "feedback": "..."}.') from None
    return WorkedExample(row["patient"].strip(), row["answer"].strip(), verdict.strip())


def read_examples(path: str) -> list[WorkedExample]:
    if not os.path.isfile(path):
        raise SynthError(f"--evaluator-examples {path} does not exist; pass a JSONL file of "
                         "worked examples (see synth/README.md).")
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise SynthError(f"--evaluator-examples {path} cannot be read ({e.strerror}).") from None
    examples = []
    for line_no, row in jsonl_objects(lines):
        where = f"{path}:{line_no}"
        if isinstance(row, BadLine):
            raise SynthError(f"{where} {row.problem}; fix or delete that line.")
        examples.append(_example(where, row))
    if not examples:
        raise SynthError(f"--evaluator-examples {path} holds no examples; write one JSON "
                         "object a line, or leave the flag out.")
    return examples
