"""How well detection does on a labelled file, per kind: `python -m safety.report FILE`.

    python -m safety.report safety/data/blind/blind.jsonl                  # lexicon + classifier
    python -m safety.report safety/data/blind/blind.jsonl --lexicon-only   # the lexicon alone
    python -m safety.report tests/data/safety/crisis.jsonl --json out.json

Each line is {"text", "label", "kind"} or {"turns": [...], "label", "kind"}, as in
safety/data/ ("label" crisis or non_crisis; files without "label" take it from --label). A
crisis item is caught when detect() says "crisis"; a non-crisis item is a false alarm when it
does. Prints a Markdown table: recall per crisis kind, false alarms per non-crisis kind, totals.
"""

import argparse
import json
import sys
from collections import defaultdict

from model.jsonl import BadLine, jsonl_objects

from .detect import DEFAULT, detect
from .errors import SafetyError


def read_labelled(path: str, label: str | None = None) -> list[dict]:
    """[{"conversation", "label", "kind"}] from a labelled JSONL file; SafetyError names the line."""
    items = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SafetyError(f"cannot read {path}: {e.strerror}.") from None
    with f:
        for n, obj in jsonl_objects(f):
            if isinstance(obj, BadLine):
                raise SafetyError(f"{path} line {n} {obj.problem}.")
            conversation = obj.get("turns") or obj.get("messages") or obj.get("text")
            item_label = obj.get("label", label)
            if conversation is None or item_label not in ("crisis", "non_crisis"):
                raise SafetyError(f"{path} line {n}: needs \"text\" or \"turns\" and a \"label\" "
                                  "of crisis or non_crisis (or pass --label).")
            items.append({"conversation": conversation, "label": item_label,
                          "kind": obj.get("kind", "all")})
    return items


def measure(items: list[dict], classifier=DEFAULT) -> dict:
    """{"crisis_recall", "false_alarm_rate", "per_kind": {label: {kind: {"right", "of"}}}}."""
    right, total = defaultdict(int), defaultdict(int)
    for item in items:
        flagged = detect(item["conversation"], classifier=classifier).is_crisis
        key = (item["label"], item["kind"])
        total[key] += 1
        right[key] += flagged if item["label"] == "crisis" else not flagged
    per_kind: dict = {"crisis": {}, "non_crisis": {}}
    for (label, kind) in sorted(total):
        per_kind[label][kind] = {"right": right[label, kind], "of": total[label, kind]}

    def share(label, of_right):
        n = sum(v["of"] for v in per_kind[label].values())
        ok = sum(v["right"] for v in per_kind[label].values())
        return round((ok if of_right else n - ok) / n, 4) if n else None
    return {"crisis_recall": share("crisis", True), "false_alarm_rate": share("non_crisis", False),
            "per_kind": per_kind}


def table(result: dict) -> str:
    lines = ["| label | kind | right | of | share |", "|---|---|---:|---:|---:|"]
    for label, kinds in result["per_kind"].items():
        for kind, v in kinds.items():
            lines.append(f"| {label} | {kind} | {v['right']} | {v['of']} | {v['right'] / v['of']:.2f} |")
    lines.append(f"\ncrisis recall {result['crisis_recall']}, false-alarm rate "
                 f"{result['false_alarm_rate']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m safety.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="labelled JSONL file")
    p.add_argument("--lexicon-only", action="store_true",
                   help="run the lexicon alone (default: lexicon + the shipped classifier)")
    p.add_argument("--label", choices=("crisis", "non_crisis"), default=None,
                   help="label for lines that carry none (default: each line must have one)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE")
    args = p.parse_args(argv)
    try:
        result = measure(read_labelled(args.file, args.label),
                         classifier=None if args.lexicon_only else DEFAULT)
    except SafetyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
