"""Instruction/input/output rows: find them, read them, check them, split them.

A row is one training example in the shape of the seed dataset (samhog/psychology-10k):

    instruction  what the assistant is asked to be (the same sentence on every seed row)
    input        the person's message
    output       the reply the model should learn to give

Where rows come from (the `source` argument):

    None or "sample"          the bundled rows in data/sample/ (train.jsonl, eval.jsonl)
    a .json/.jsonl/.csv file  a JSON array of objects, JSON Lines, or CSV with a header row
    a folder                  every .json/.jsonl/.csv file inside it (files named like an
                              evaluation split, e.g. eval.jsonl or test.csv, are kept apart)
    "owner/name"              a dataset on the Hugging Face hub, fetched with huggingface_hub

Validation, decided once for every source:

    - "input" and "output" must be non-empty: a reply without a message (or a message without
      a reply) teaches nothing. Such rows are skipped and counted, with their first line numbers.
    - "instruction" may be empty or absent: DEFAULT_INSTRUCTION stands in for it, because the
      seed data uses one fixed instruction and most other instruction data has none.
    - Surrounding whitespace is stripped; rows that are then exact duplicates are dropped.
    - Keys other than the three (a "topic", provenance fields) are ignored.
    - Lines that are not UTF-8 or not a valid record (broken JSON, bad CSV quoting) are skipped
      and counted with their first line numbers (data/records.py reads the files, a line at a
      time). strict=True raises at the first skipped line or row instead, naming file:line.
    - With max_chars, a field longer than that is cut on the side training would truncate
      anyway (data/cap.py), so no row holds a 1 MB string; format.py cuts the same way.
    - A file that cannot be parsed, lacks a required column altogether, or holds no usable row
      raises UserError naming the file (and the line, where there is one).
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from data.cap import cap_fields
from data.records import read_records
from model.errors import UserError

# The instruction the bundled sample rows carry; rows without one get it too, so that a model
# trained on a mix sees one consistent instruction.
DEFAULT_INSTRUCTION = (
    "You are a supportive mental-health assistant. Read the person's message carefully, respond "
    "with warmth and empathy, reflect back what they have shared, and offer practical, safe next "
    "steps, including professional support where it would help."
)

DATA_SUFFIXES = (".json", ".jsonl", ".csv")

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED_DATASET = "samhog/psychology-10k"

# A file name like eval.jsonl, validation-00000.csv or test_rows.json marks an evaluation split.
EVAL_NAME = re.compile(r"^(eval|evaluation|valid|validation|val|test|dev)([._-]|$)", re.IGNORECASE)
# "owner/name" with the characters the hub allows; anything else is treated as a path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_SKIPPED_SHOWN = 5


@dataclass(frozen=True)
class Row:
    instruction: str
    input: str
    output: str


@dataclass
class LoadStats:
    """What happened while reading: shown to the user so silent data loss cannot happen."""

    source: str
    files: list[str] = field(default_factory=list)
    read: int = 0                  # records found in the files
    kept: int = 0                  # rows returned
    skipped: int = 0               # empty or missing input/output
    skipped_where: list[str] = field(default_factory=list)  # first few "file:line"
    malformed: int = 0             # lines skipped: broken JSON or CSV, not an object
    malformed_where: list[str] = field(default_factory=list)
    not_utf8: int = 0              # lines skipped: not UTF-8 text
    not_utf8_where: list[str] = field(default_factory=list)
    duplicates: int = 0            # exact duplicates dropped
    default_instruction: int = 0   # kept rows that got DEFAULT_INSTRUCTION
    capped: int = 0                # kept rows with a field cut to max_chars
    max_chars: int | None = None
    evaluation: "LoadStats | None" = None  # the evaluation files', when read separately

    def count(self, kind: str, where: str) -> None:
        """One more skipped line of `kind` ("malformed" or "not_utf8"), at `where`."""
        setattr(self, kind, getattr(self, kind) + 1)
        shown = getattr(self, f"{kind}_where")
        if len(shown) < MAX_SKIPPED_SHOWN:
            shown.append(where)

    def summary(self) -> str:
        text = f"{self.source}: {self.kept} rows kept of {self.read} read"
        if self.malformed:
            text += (f", skipped {self.malformed} malformed line{'s' * (self.malformed > 1)} "
                     f"({_places(self.malformed_where, self.malformed)})")
        if self.not_utf8:
            text += (f", skipped {self.not_utf8} non-UTF-8 line{'s' * (self.not_utf8 > 1)} "
                     f"({_places(self.not_utf8_where, self.not_utf8)})")
        if self.skipped:
            text += (f", {self.skipped} skipped for an empty input or output "
                     f"({_places(self.skipped_where, self.skipped)})")
        if self.duplicates:
            text += f", {self.duplicates} duplicates dropped"
        if self.default_instruction:
            text += f", {self.default_instruction} given the default instruction"
        if self.capped:
            text += f", {self.capped} with a field cut to {self.max_chars} characters"
        ev = self.evaluation
        if ev is not None and (ev.malformed or ev.not_utf8 or ev.skipped):
            text += f"; {ev.summary()}"  # lines lost from the evaluation files are news too
        return text


def _places(where: list[str], total: int) -> str:
    """["a.jsonl:12", "a.jsonl:40", "b.jsonl:3"] -> "a.jsonl:12, :40, b.jsonl:3" (+ ", ...")."""
    parts, last_file = [], None
    for place in where:
        file, sep, line = place.rpartition(":")
        parts.append(f":{line}" if sep and file == last_file else place)
        last_file = file if sep else None
    return ", ".join(parts) + (", ..." if total > len(where) else "")


def _clean(value) -> str:
    """A field as stripped text; None, missing and non-text values count as empty."""
    return value.strip() if isinstance(value, str) else ""


def _rows_from_files(files: list[Path], source: str, strict: bool = False,
                     max_chars: int | None = None) -> tuple[list[Row], LoadStats]:
    stats = LoadStats(source=source, files=[str(f) for f in files], max_chars=max_chars)
    rows: list[Row] = []
    seen: set[Row] = set()
    for path in files:
        for where, obj in read_records(path, strict, stats.count):
            stats.read += 1
            instruction = _clean(obj.get("instruction"))
            text_in, text_out = _clean(obj.get("input")), _clean(obj.get("output"))
            if not text_in or not text_out:
                if strict:
                    raise UserError(f"{path.parent / where} has an empty or missing "
                                    f"{'input' if not text_in else 'output'}; fill it in or "
                                    "delete the row (without --strict it is skipped and counted).")
                stats.skipped += 1
                if len(stats.skipped_where) < MAX_SKIPPED_SHOWN:
                    stats.skipped_where.append(where)
                continue
            cut = False
            if max_chars is not None:
                instruction, text_in, text_out, cut = cap_fields(instruction, text_in, text_out,
                                                                 max_chars)
            row = Row(instruction or DEFAULT_INSTRUCTION, text_in, text_out)
            if row in seen:
                stats.duplicates += 1
                continue
            seen.add(row)
            stats.default_instruction += not instruction
            stats.capped += cut
            rows.append(row)
    stats.kept = len(rows)
    if not rows:
        raise UserError(f"{source} holds no usable rows ({stats.read} read, {stats.skipped} "
                        "with an empty input or output); every row needs input and output text.")
    return rows, stats


# ---------------------------------------------------------------------------------------------
# Finding the files a source names.


def _data_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """All data files under `folder` (sorted), split into (training files, evaluation files)."""
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    train = [p for p in files if not EVAL_NAME.match(p.name)]
    evals = [p for p in files if EVAL_NAME.match(p.name)]
    return train, evals


def _download(repo_id: str) -> Path:
    """Fetch (or find in the cache) a hub dataset's json/jsonl/csv files; returns its folder."""
    from model import hub
    return hub.download(repo_id, ["*.json", "*.jsonl", "*.csv"], repo_type="dataset",
                        instead="pass a local .json, .jsonl or .csv file instead")


def resolve_files(source: str | os.PathLike | None) -> tuple[list[Path], list[Path], str]:
    """(training files, evaluation files, display name) for a source; see the module docstring."""
    if source is None or str(source) == "sample":
        folder = SAMPLE_DIR
        if not (folder / "train.jsonl").is_file():
            raise UserError(f"the bundled sample rows are missing ({folder / 'train.jsonl'}); "
                            "reinstall the project or pass --data with a file.")
        evals = [folder / "eval.jsonl"] if (folder / "eval.jsonl").is_file() else []
        return [folder / "train.jsonl"], evals, "sample"
    name = str(source)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise UserError(f"{path} is not a .json, .jsonl or .csv file; convert it to one "
                            "of those.")
        return [path], [], name
    if path.is_dir():
        train, evals = _data_files(path)
        if not train and not evals:
            raise UserError(f"folder {path} holds no .json, .jsonl or .csv file; put the rows "
                            "in one of those formats.")
        if not train:
            raise UserError(f"folder {path} holds only evaluation files "
                            f"({', '.join(p.name for p in evals)}); pass one of them as the "
                            "training file instead.")
        return train, evals, name
    looks_like_path = (name.startswith((".", "/", "~")) or "\\" in name
                       or path.suffix.lower() in DATA_SUFFIXES)
    if looks_like_path or not HUB_ID.match(name):
        raise UserError(f"data source {name!r} is neither an existing file or folder nor a hub "
                        "dataset id like owner/name; check the path.")
    folder = _download(name)
    train, evals = _data_files(folder)
    if not train:
        train, evals = evals, []  # a dataset that ships only a "test" file still trains
    if not train:
        raise UserError(f"dataset {name!r} has no .json, .jsonl or .csv file (only those are "
                        "read); convert it and pass the local file instead.")
    return train, evals, name


# ---------------------------------------------------------------------------------------------
# Public API.


def load_rows(source: str | os.PathLike | None = None, strict: bool = False,
              max_chars: int | None = None) -> tuple[list[Row], LoadStats]:
    """The training rows of a source, checked and deduplicated, with what was dropped and why.
    strict: raise at the first line or row that would be skipped. max_chars: cut longer fields
    (pass data.field_char_limit(max_len))."""
    train_files, _, name = resolve_files(source)
    return _rows_from_files(train_files, name, strict, max_chars)


def _row_score(row: Row, seed: int) -> float:
    """A number in [0, 1) fixed by the row's text and the seed alone."""
    text = f"{seed}\x00{row.instruction}\x00{row.input}\x00{row.output}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_rows(rows: list[Row], eval_fraction: float = 0.005,
               seed: int = 3407) -> tuple[list[Row], list[Row]]:
    """Hold out about `eval_fraction` of the rows for evaluation, deterministically.

    Each row gets a score from a hash of its text and the seed; the rows with the lowest scores
    are held out. So the split does not depend on row order (shuffling the file changes
    nothing), and adding rows moves at most the few rows at the boundary. At least one row is
    held out whenever eval_fraction > 0 and there are two rows or more. Both parts keep the
    input order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be at least 0 and below 1, got {eval_fraction}.")
    n_eval = round(len(rows) * eval_fraction)
    if eval_fraction > 0 and len(rows) >= 2:
        n_eval = max(1, n_eval)
    if n_eval == 0:
        return list(rows), []
    ranked = sorted(range(len(rows)), key=lambda i: _row_score(rows[i], seed))
    held_out = set(ranked[:n_eval])
    train = [r for i, r in enumerate(rows) if i not in held_out]
    evals = [r for i, r in enumerate(rows) if i in held_out]
    return train, evals


def load_train_eval(source: str | os.PathLike | None = None,
                    eval_source: str | os.PathLike | None = None,
                    eval_fraction: float = 0.005,
                    seed: int = 3407, strict: bool = False,
                    max_chars: int | None = None) -> tuple[list[Row], list[Row], LoadStats]:
    """Training and evaluation rows for a run, plus the training rows' LoadStats (whose
    `evaluation` holds the evaluation files' own, when they were read). strict and max_chars
    as in load_rows.

    The evaluation rows come from, in this order: `eval_source` if given; the evaluation files
    that the source itself ships (data/sample/eval.jsonl, a folder's eval.jsonl or test.csv);
    else a deterministic split_rows() of the training rows. Evaluation rows that also appear in
    the training rows are removed from training, so the held-out score stays honest.
    """
    train_files, eval_files, name = resolve_files(source)
    train, stats = _rows_from_files(train_files, name, strict, max_chars)
    if eval_source is not None:
        evals, stats.evaluation = load_rows(eval_source, strict, max_chars)
    elif eval_files:
        evals, stats.evaluation = _rows_from_files(eval_files, f"{name} (evaluation files)",
                                                   strict, max_chars)
    else:
        return (*split_rows(train, eval_fraction, seed), stats)
    held_out = set(evals)
    train = [r for r in train if r not in held_out]
    if not train:
        raise UserError(f"every training row of {name} is also an evaluation row; "
                        "pass a different evaluation file.")
    return train, evals, stats
