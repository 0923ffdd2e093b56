"""The labelled crisis corpus for the classifier: items, their risk category, and the folds.

    safety/data/corpus/*.jsonl
      {"text", "label", "kind", "writer"}                 one message
      {"turns": [{"role", "content"}...], "label", ...}   a conversation: its user turns, joined
    -> Item(text, y = 1 crisis / 0 not, kind, writer, category or None)

Folds hold out whole writers. Every item is scored by a head that never saw its writer, so the
pooled out-of-fold scores say how the classifier does on text by a new hand (the blind set's
situation), and one writer's near-paraphrases never sit on both sides of a split. With a single
writer (a tiny test corpus) the folds fall back to a hash of the text.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from model.jsonl import BadLine, jsonl_objects

from .categories import RISK_CATEGORIES

# Corpus kind -> risk category. Voice kinds (teen, elderly, broken_english, buried,
# psychosis_commands) say how a crisis is written, not which one: no category label.
KIND_CATEGORY = {
    "explicit_ideation": "suicidal_ideation", "passive_ideation": "suicidal_ideation",
    "farewell": "suicidal_ideation", "plan_means": "suicidal_ideation",
    "method_question": "suicidal_ideation", "self_harm": "self_harm",
    "medical_danger": "medical_emergency", "harm_to_others": "harm_to_others", "abuse": "abuse",
}
assert set(KIND_CATEGORY.values()) <= set(RISK_CATEGORIES)
LABELS = {"crisis": 1, "non_crisis": 0}


@dataclass
class Item:
    text: str
    y: int                   # 1 crisis, 0 non_crisis
    kind: str
    writer: str
    category: str | None     # a RISK_CATEGORIES entry for topic kinds; None for voice kinds

    @property
    def category_index(self) -> int:
        return RISK_CATEGORIES.index(self.category) if self.category else -1


def user_text(turns) -> str:
    """A conversation's user turns, oldest first, one per line."""
    return "\n".join(str(t.get("content") or "") for t in turns
                     if isinstance(t, dict) and t.get("role") == "user")


def read_corpus(folder: Path) -> tuple[list[Item], list[str]]:
    """Every usable line of folder/*.jsonl (sorted by file name), and one note per skipped line."""
    files = sorted(Path(folder).glob("*.jsonl"))
    items, skipped = [], []
    for path in files:
        with open(path, "rb") as f:
            rows = list(jsonl_objects(f))
        for n, row in rows:
            if isinstance(row, BadLine):
                skipped.append(f"{path.name}:{n}: {row.problem}")
                continue
            try:
                text = row["text"] if "text" in row else user_text(row["turns"])
                y = LABELS[row["label"]]
            except (KeyError, TypeError, AttributeError) as e:
                skipped.append(f"{path.name}:{n}: {type(e).__name__} {e}")
                continue
            if not isinstance(text, str) or not text.strip():
                skipped.append(f"{path.name}:{n}: empty text")
                continue
            kind = str(row.get("kind", "unknown"))
            items.append(Item(text, y, kind, str(row.get("writer", path.stem)),
                              KIND_CATEGORY.get(kind) if y else None))
    return items, skipped


def corpus_hash(folder: Path) -> str:
    """sha256 over the corpus files' names and bytes, in name order: which data made a head."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.jsonl")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _hash01(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0x100000000


def writer_folds(items: list[Item], folds: int = 0, hash_folds: int = 5) -> tuple[list[int], str]:
    """A fold number per item, and how the folds were made. Writers, in name order, are dealt
    round-robin into `folds` folds (0: one fold per writer); with a single writer (a tiny test
    corpus), `hash_folds` folds by a hash of the text."""
    writers = sorted({it.writer for it in items})
    if len(writers) >= 2:
        n = len(writers) if folds <= 0 else min(folds, len(writers))
        groups = [[w for k, w in enumerate(writers) if k % n == f] for f in range(n)]
        note = "; ".join(f"fold {f}: {', '.join(g)}" for f, g in enumerate(groups))
        return [writers.index(it.writer) % n for it in items], f"writers in {n} folds ({note})"
    return ([int(_hash01(it.text) * hash_folds) for it in items],
            f"{hash_folds} folds by a hash of the text (a single writer)")


SMALL_TALK = Path(__file__).resolve().parent / "classifier" / "small_talk.txt"


def read_small_talk(path: Path = SMALL_TALK) -> list[str]:
    """The hand-written everyday sentences (no risk in them), without comment lines."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def long_texts(items: list[Item], per_writer: int, seed: int = 0,
               small_talk: list[str] | None = None) -> list[Item]:
    """Training-only texts, so that length and plain chat never look like a crisis (the
    corpus's long messages are mostly `buried` crises, and it has no plain small talk):

        each small-talk sentence alone                                        -> non_crisis
        per writer, `per_writer` of   small talk + 0-3 of the writer's calm messages, shuffled
                                                                              -> non_crisis
        and `per_writer // 2` of      the same with one of the writer's crisis messages inside
                                                                              -> crisis

    Corpus messages come from one writer per text, so each text stays inside that writer's
    fold. Kinds: "synthetic:calm", "synthetic:<the crisis message's kind>" (leave-one-kind-out
    drops those with the kind it leaves out).
    """
    import random
    if per_writer <= 0:
        return []
    rng = random.Random(seed)
    talk = read_small_talk() if small_talk is None else small_talk
    writers = sorted({it.writer for it in items})
    out = [Item(t, 0, "synthetic:calm", writers[i % len(writers)], None) for i, t in enumerate(talk)]
    for writer in writers:
        calm = [it.text for it in items if it.writer == writer and not it.y and "\n" not in it.text]
        crisis = [it for it in items if it.writer == writer and it.y and "\n" not in it.text]
        for k in range(per_writer + (per_writer // 2 if crisis else 0)):
            parts = rng.sample(talk, rng.randint(2, min(10, len(talk))))
            parts += rng.sample(calm, rng.randint(0, min(3, len(calm))))
            rng.shuffle(parts)
            if k < per_writer:
                out.append(Item(" ".join(parts), 0, "synthetic:calm", writer, None))
                continue
            line = rng.choice(crisis)
            parts.insert(rng.randint(0, len(parts)), line.text)
            out.append(Item(" ".join(parts), 1, f"synthetic:{line.kind}", writer, line.category))
    return out
