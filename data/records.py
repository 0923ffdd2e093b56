"""One data file -> its records, (where, dict) pairs, read a line at a time; bad lines skipped.

    for where, obj in read_records(Path("rows.jsonl"), strict=False, count=on_bad):
        ...   # where = "rows.jsonl:12" (or "rows.json item 3"), obj = the parsed object

Formats:

    .jsonl   streamed: each line is read as bytes and decoded on its own, so memory holds one
             line at a time (a line is read whole: a 1 MB line costs a few MB while it is parsed)
    .csv     streamed the same way through csv.reader; a quoted field may span lines, and an
             unclosed quote runs to the end of the file (CSV has no way to tell where it ends)
    .json    a JSON array of objects, read whole: json cannot parse one item at a time, so a big
             array needs a few times its size in memory while it loads; save big data as .jsonl.
             A .json file whose first line is an object on its own is JSON Lines (many hub
             datasets name theirs so) and is streamed as .jsonl.

A line that is not UTF-8, or not a valid record (broken JSON or CSV quoting, a JSON value that is
not an object, more CSV fields than the header names), is skipped and reported through
count(kind, where), kind "malformed" or "not_utf8". With strict=True it raises UserError instead,
one line naming file:line and what is wrong. Problems with the file as a whole (empty, not
parseable as a JSON array, no "input" or "output" column, nothing readable) always raise.
"""

import csv
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from model.errors import UserError
from model.jsonl import BOM, BadLine, jsonl_objects

REQUIRED_COLUMNS = ("input", "output")   # every file must have these keys (rows.py checks values)
FIELDS = ("instruction", "input", "output")
CSV_FIELD_LIMIT = 2**31 - 1               # csv refuses fields over 131,072 characters by default
# Bytes that are not UTF-8 become these code points when decoded with errors="surrogateescape".
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
SAVE_AS_UTF8 = "save the file as UTF-8 or delete that line"
KEYS_SHOWN = 20                           # column names quoted when a required one is missing

Records = Iterator[tuple[str, dict]]
Count = Callable[[str, str], None]        # count(kind, where) for each skipped line


def _strict_hint(message: str) -> str:
    return f"{message} (without --strict such lines are skipped and counted)."


class _Bad:
    """Where a skipped line goes: raised at once (strict) or counted."""

    def __init__(self, strict: bool, count: Count):
        self.strict, self.count, self.n = strict, count, 0

    def __call__(self, kind: str, where: str, message: str) -> None:
        if self.strict:
            raise UserError(_strict_hint(message))
        self.n += 1
        self.count(kind, where)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each line, one at a time; a leading byte-order mark dropped.
    Lines end at b"\\n" only, so a U+2028 inside a JSON string does not split its line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            yield line_no, (raw[len(BOM):] if line_no == 1 and raw.startswith(BOM) else raw)


def _not_utf8(path: Path, line_no: int, byte: int, offset: int) -> str:
    return (f"{path}:{line_no} is not UTF-8 text (byte 0x{byte:02x} at column {offset + 1}); "
            f"{SAVE_AS_UTF8}")


# ---------------------------------------------------------------------------------------------
# The three formats.


def _read_jsonl(path: Path, bad: _Bad) -> Records:
    with open(path, "rb") as f:
        for line_no, obj in jsonl_objects(f):
            where = f"{path.name}:{line_no}"
            if not isinstance(obj, BadLine):
                yield where, obj
            elif obj.kind == "not_utf8":
                bad("not_utf8", where, f"{path}:{line_no} {obj.problem}; {SAVE_AS_UTF8}")
            elif obj.kind == "malformed":
                bad("malformed", where, f"{path}:{line_no} {obj.problem}; fix or delete that line")
            else:
                bad("malformed", where, f"{path}:{line_no} {obj.problem}; each line must look "
                                        'like {"instruction": ..., "input": ..., "output": ...}')


def _first_line_is_an_object(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.read(1 << 16).lstrip(BOM + b" \t\r\n").startswith(b"["):
            return False  # an array: no need to read what may be one long line
    for _, raw in _lines(path):
        if raw.strip():
            try:
                return isinstance(json.loads(raw.decode("utf-8", "surrogateescape")), dict)
            except json.JSONDecodeError:
                return False
    return False


def _read_json(path: Path, bad: _Bad) -> Records:
    if _first_line_is_an_object(path):
        yield from _read_jsonl(path, bad)
        return
    raw = path.read_bytes()  # read whole: see the module docstring
    raw = raw[len(BOM):] if raw.startswith(BOM) else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if bad.strict:
            line_no = raw.count(b"\n", 0, err.start) + 1
            offset = err.start - (raw.rfind(b"\n", 0, err.start) + 1)
            raise UserError(_strict_hint(_not_utf8(path, line_no, raw[err.start], offset))) \
                from None
        # Bad bytes become U+DC80..U+DCFF, so the array still parses; items holding one are
        # skipped below.
        text = raw.decode("utf-8", "surrogateescape")
    del raw
    if not text.strip():
        return  # read_records says the file is empty
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno} is not valid JSON ({err.msg}); fix the file or save "
                        "it as JSON Lines (.jsonl), where a bad line is skipped.") from None
    del text
    if isinstance(data, dict):  # a single object is one row
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path} must hold a JSON array of objects, not a {type(data).__name__}.")
    for i, obj in enumerate(data):
        data[i] = None  # let each item go once it is read
        where = f"{path.name} item {i + 1}"
        if not isinstance(obj, dict):
            bad("malformed", where, f"{path} item {i + 1} of the array is not a JSON object; "
                                    'every item must look like {"instruction": ..., "input": '
                                    '..., "output": ...}')
        elif any(isinstance(obj.get(k), str) and ESCAPED_BYTE.search(obj[k]) for k in FIELDS):
            bad("not_utf8", where, f"{path} item {i + 1} is not UTF-8 text")
        else:
            yield where, obj


def _read_csv(path: Path, bad: _Bad) -> Records:
    not_utf8: dict[int, str] = {}  # line number -> message, for lines not yet in a record

    def text_lines() -> Iterator[str]:
        for line_no, raw in _lines(path):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                not_utf8[line_no] = _not_utf8(path, line_no, raw[err.start], err.start)
                # The line's quoting is ASCII and survives "replace", so the records after it
                # still parse; the record holding it is skipped below.
                yield raw.decode("utf-8", "replace")

    old_limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # long fields are cut later, not refused
    try:
        reader = csv.reader(text_lines(), strict=True)  # strict: a stray quote is an error
        try:
            header = next(reader, None)
        except csv.Error as err:
            raise UserError(f"{path}:1 (the header row) is not valid CSV ({err}).") from None
        if header is None:
            return
        if not_utf8:
            raise UserError(f"{path}:1 (the header row) is not UTF-8 text; save the file as UTF-8.")
        start = reader.line_num + 1  # where the next record starts
        while True:
            try:
                fields = next(reader)
                error = None
            except StopIteration:
                break
            except csv.Error as err:
                fields, error = None, err
            where_line, start = start, reader.line_num + 1
            where = f"{path.name}:{where_line}"
            bad_lines = sorted(n for n in not_utf8 if n < start)
            if bad_lines:
                message = not_utf8[bad_lines[0]]
                for n in bad_lines:
                    del not_utf8[n]
                bad("not_utf8", f"{path.name}:{bad_lines[0]}", message)
            elif error is not None:
                bad("malformed", where, f"{path}:{where_line} is not valid CSV ({error}); check "
                                        "the quoting on that line")
            elif len(fields) > len(header):
                bad("malformed", where, f"{path}:{where_line} has more fields than the header "
                                        "row; quote fields that contain commas")
            elif fields:  # csv.reader gives [] for a blank line
                yield where, dict(zip(header, fields))  # missing trailing fields are absent
    finally:
        csv.field_size_limit(old_limit)


# ---------------------------------------------------------------------------------------------
# Any file.


def _is_blank(path: Path) -> bool:
    return all(not raw.strip() for _, raw in _lines(path))


def read_records(path: Path, strict: bool, count: Count) -> Records:
    """The records of one .json/.jsonl/.csv file in order; see the module docstring."""
    suffix = path.suffix.lower()
    reader = _read_jsonl if suffix == ".jsonl" else _read_json if suffix == ".json" else _read_csv
    bad = _Bad(strict, count)
    n = 0
    present: set[str] = set()  # the required columns seen so far
    shown: set[str] = set()    # a few column names, for the error below
    for where, obj in reader(path, bad):
        n += 1
        present.update(c for c in REQUIRED_COLUMNS if c in obj)
        if len(shown) < KEYS_SHOWN:
            shown.update(str(k) for k in obj)
        yield where, obj
    if n == 0:
        if bad.n:
            raise UserError(f"{path} holds no readable row ({bad.n} lines skipped as not UTF-8 "
                            "or malformed); fix the file.")
        if _is_blank(path):
            raise UserError(f"{path} is empty; it must hold rows with input and output fields.")
        raise UserError(f"{path} holds no rows; it must hold rows with input and output fields.")
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        found = ", ".join(sorted(shown)[:KEYS_SHOWN]) or "none"
        raise UserError(f"{path} has no {' or '.join(repr(c) for c in missing)} column "
                        f"(found: {found}); rename its columns to instruction, input and output.")
