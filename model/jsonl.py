"""JSON Lines, parsed one line at a time: the one reader that data, safety, synth and scripts share.

    with open(path, "rb") as f:
        for line_no, obj in jsonl_objects(f):
            if isinstance(obj, BadLine):
                ...   # skip and count it, or raise: f"{path}:{line_no} {obj.problem}"
            else:
                ...   # obj is a dict

Each line is decoded on its own, as bytes, so a bad byte names its own line and memory holds one
line at a time. Lines end at b"\\n" only: a U+2028 inside a JSON string does not split its line,
and a Windows "\\r\\n" leaves a "\\r" that JSON reads as whitespace. A UTF-8 byte-order mark at
the very start is dropped, and blank lines are not objects. What to do with a bad line is the
caller's choice: data/ skips and counts it, `python -m safety` and synth stop on it.

This file imports nothing from the project and not torch, so the torch-free rooms (the safety
lexicon, synth) can use it.
"""

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"   # a UTF-8 byte-order mark some editors write first


@dataclass(frozen=True)
class BadLine:
    """A line that is not a JSON object. kind: "not_utf8" | "malformed" | "not_object";
    problem: what is wrong, written to follow the line's place ("rows.jsonl:3 " + problem)."""
    kind: str
    problem: str


def jsonl_objects(lines: Iterable[bytes]) -> Iterator[tuple[int, dict | BadLine]]:
    """(line number from 1, the line's object or a BadLine) for each non-blank line."""
    for line_no, raw in enumerate(lines, start=1):
        if line_no == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield line_no, BadLine("not_utf8", f"is not UTF-8 text (byte 0x{raw[err.start]:02x} "
                                               f"at column {err.start + 1})")
            continue
        if not line.strip():
            continue  # a trailing newline, or a blank line between rows
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield line_no, BadLine("malformed", f"is not valid JSON ({err.msg} at column "
                                                f"{err.colno})")
            continue
        if not isinstance(obj, dict):
            yield line_no, BadLine("not_object", f"is a JSON {type(obj).__name__}, not an object")
            continue
        yield line_no, obj
