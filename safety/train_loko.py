"""Leave-one-kind-out: how the classifier does on a kind of crisis nobody showed it.

    crisis kinds (sorted) in groups of --loko-together (1: one kind per group)
      -> per group: the shipped recipe (same variant, same folds, without fold 0) trained
         without the group's kinds, nor the small-talk texts built around their messages
      -> each left-out kind's items, all writers, scored by that head
      -> recall at the shipped (dev-chosen) threshold, for the classifier alone and for the
         whole detection (lexicon or classifier: the lexicon is hand-written, never trained)

One training per group (about 6 minutes each here), so the run is resumable: after every
group the results so far go to loko_partial.json beside the head, keyed by everything that
decides them (corpus hash, training config, threshold). Run the same command again after an
interruption and the finished groups are read back instead of retrained; a different corpus
or config starts over.
"""

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from .detect import detect
from .train_data import Item

PARTIAL_FILE = "loko_partial.json"


def groups_of(kinds: list[str], together: int) -> list[list[str]]:
    """Sorted kinds dealt round-robin into groups of about `together`."""
    kinds = sorted(kinds)
    n_groups = -(-len(kinds) // together)
    return [kinds[g::n_groups] for g in range(n_groups)]


def lexicon_says_crisis(text: str) -> bool:
    return detect(text, classifier=None).level == "crisis"


def leave_kinds_out(fit, score, items: list[Item], real: list[Item], folds: list[int],
                    threshold: float, together: int, key: dict, out: Path,
                    progress: bool) -> dict:
    """{kind: {n, left_out_with, recall, recall_with_lexicon, scores}} for every crisis kind.

    `items` is what training may use (the corpus and the training-only long texts, folds
    parallel to it); `real` is the corpus alone, whose items are scored. `key` names the run:
    partial results are reused only under the same key."""
    partial_path = out / PARTIAL_FILE
    done: dict = {}
    if partial_path.is_file():
        try:
            saved = json.loads(partial_path.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                done = saved.get("kinds", {})
        except (json.JSONDecodeError, OSError, AttributeError):
            done = {}                       # a torn or foreign file: start over
    if done:
        print(f"leave-kinds-out: {len(done)} kinds read back from {partial_path}")

    crisis_kinds = sorted({it.kind for it in real if it.y})
    groups = groups_of(crisis_kinds, together)
    for group in tqdm(groups, desc="leave kinds out", disable=not progress, file=sys.stderr):
        if all(k in done for k in group):
            continue
        left_out = set(group) | {f"synthetic:{k}" for k in group}
        keep = [i for i, it in enumerate(items) if folds[i] != 0 and it.kind not in left_out]
        head = fit(keep)
        for kind in group:
            held = [i for i, it in enumerate(real) if it.kind == kind]
            s = score(head, held)
            flagged = [x >= threshold for x in s]
            either = [f or lexicon_says_crisis(real[i].text) for f, i in zip(flagged, held)]
            done[kind] = {"n": len(s), "left_out_with": sorted(set(group) - {kind}),
                          "recall": sum(flagged) / len(s),
                          "recall_with_lexicon": sum(either) / len(s),
                          "scores": [round(x, 6) for x in s]}      # recall at any threshold
        _write(partial_path, {"key": key, "kinds": done})
    return dict(sorted(done.items()))


def mean_recall(loko: dict, field: str = "recall") -> float:
    return sum(r[field] for r in loko.values()) / max(len(loko), 1)


def table(loko: dict) -> str:
    lines = ["| kind left out | items | classifier | lexicon or classifier |",
             "|---|---:|---:|---:|"]
    for kind, r in loko.items():
        lines.append(f"| {kind} | {r['n']} | {r['recall']:.3f} | {r['recall_with_lexicon']:.3f} |")
    lines.append(f"| **mean** | | **{mean_recall(loko):.3f}** | "
                 f"**{mean_recall(loko, 'recall_with_lexicon'):.3f}** |")
    return "\n".join(lines)


def _write(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n", encoding="utf-8")
    os.replace(tmp, path)
