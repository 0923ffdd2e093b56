"""JSON Lines files: reading a stage's input, and an output file that survives being killed.

Resuming works because the output file is the only state. Each finished row is written as one
complete line with a single os.write() on a file opened with O_APPEND, then fsync'd, so a kill
can at worst leave one torn line at the very end. On start that tail is repaired: kept if it is
a whole JSON object that only lacks its newline, cut off otherwise. The ids already in the file
are then skipped, so a rerun neither repeats nor loses a row.
"""

import json
import os
import sys

from model.jsonl import BadLine, jsonl_objects
from synth.errors import SynthError


def _parse_lines(path: str, lines) -> list[dict]:
    """The rows of a file's lines (bytes), each with its "_line" number; SynthError on a bad one."""
    rows = []
    for line_no, row in jsonl_objects(lines):
        if isinstance(row, BadLine):
            raise SynthError(f"{path} line {line_no} {row.problem}; fix or delete that line "
                             '(each line must be one row like {"id": ..., "input": ...}).')
        row["_line"] = line_no  # for error messages; never written back
        rows.append(row)
    return rows


def read_input_rows(path: str, *, need_output: bool) -> list[dict]:
    """The rows of a stage's --in file, each with a string "id".

    Rows without an "id" get "line-<n>" from their line number. Rows with an empty "input"
    (or, when need_output, an empty "output") are skipped with a warning, not fatal: a large
    file with a few gaps should still run.
    """
    if not os.path.isfile(path):
        raise SynthError(f"--in {path} does not exist; pass the JSONL file the previous stage "
                         "wrote.")
    with open(path, "rb") as f:
        rows = _parse_lines(path, f)
    kept, skipped, seen = [], [], set()
    for row in rows:
        line_no = row.pop("_line")
        row["id"] = str(row["id"]) if row.get("id") is not None else f"line-{line_no}"
        if row["id"] in seen:
            raise SynthError(f"{path} line {line_no} repeats id {row['id']!r}; "
                             "ids must be unique, so remove or rename one of them.")
        seen.add(row["id"])
        has_input = isinstance(row.get("input"), str) and row["input"].strip()
        has_output = isinstance(row.get("output"), str) and row["output"].strip()
        if not has_input or (need_output and not has_output):
            skipped.append(line_no)
            continue
        kept.append(row)
    if skipped:
        what = "input or output" if need_output else "input"
        print(f"synth: skipped {len(skipped)} rows of {path} with an empty {what} "
              f"(first at line {skipped[0]})", file=sys.stderr)
    if not kept:
        hint = "; run `python -m synth respond` on it first" if need_output else ""
        raise SynthError(f"--in {path} holds no usable rows{hint}.")
    return kept


class AppendOnlyJsonl:
    """An output file that rows are appended to, one atomic line at a time.

    Opening it repairs a torn last line and reads the rows already there (`.rows`); the file
    itself is created on the first append, so a dry run or an empty run leaves nothing behind.
    """

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = self._repair_and_read()
        self._fd: int | None = None

    def _repair_and_read(self) -> list[dict]:
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise SynthError(f"the folder of {self.path} does not exist; create {folder} or "
                             "pass another --out.")
        if os.path.isdir(self.path):
            raise SynthError(f"{self.path} is a folder; pass a file name like "
                             "rows.jsonl as --out.")
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1  # 0 when the only line is the torn one
            try:
                whole = isinstance(json.loads(data[cut:]), dict)
            except (json.JSONDecodeError, UnicodeDecodeError):
                whole = False
            if whole:  # a complete row that only lacks its newline: keep it
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                data += b"\n"
            else:
                os.truncate(self.path, cut)
                print(f"synth: removed a torn last line ({len(data) - cut} bytes) from "
                      f"{self.path}; its row will be made again", file=sys.stderr)
                data = data[:cut]
        rows = _parse_lines(self.path, data.split(b"\n"))
        for row in rows:
            row.pop("_line")
        return rows

    def ids(self) -> set[str]:
        return {str(row["id"]) for row in self.rows if "id" in row}

    def append(self, row: dict) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        # One write() on an O_APPEND descriptor puts the whole line at the end in one piece.
        # A regular file takes it all at once; the loop only guards against a short write
        # (a full disk), whose torn tail the next start repairs.
        written = 0
        while written < len(line):
            written += os.write(self._fd, line[written:])
        os.fsync(self._fd)  # the line is on disk before the row counts as done
        self.rows.append(row)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
