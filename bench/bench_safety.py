"""Latency of the crisis check per message: the lexicon alone, and the lexicon + the classifier.

    python bench/bench_safety.py                          # the bundled tests/data/safety sets
    python bench/bench_safety.py --repeats 5 --threads 2  # steadier on a busy machine
    python bench/bench_safety.py --file msgs.jsonl        # + batch throughput on a JSONL of {"text"}

Single messages: every message of tests/data/safety/crisis.jsonl and non_crisis.jsonl (a
conversation counts as its user turns joined), each timed alone --repeats times, after
--warmup untimed passes: (i) safety.detect on the text, (ii) safety.detect and then the
classifier's scores([text]), which is what a chat turn pays with both on. p50 and p95 are over
all timed calls. With --file, messages per second over the file's texts: the lexicon (one call per text), the
classifier alone in batches of --batch-size, and detection with both, one detect() per text
versus what `python -m safety --file` does (the classifier batched over 128 lines, then one
detect() per line). Prints a Markdown table and the command that made it.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default=str(ROOT / "tests" / "data" / "safety"),
                   help="folder with crisis.jsonl and non_crisis.jsonl for the single-message "
                   "timings (default: tests/data/safety)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed calls per message and path (default: 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed passes over the messages first (default: 1)")
    p.add_argument("--file", default=None,
                   help='JSONL of {"text": ...} for batch throughput (default: none, skipped)')
    p.add_argument("--batch-size", type=int, default=32,
                   help="texts per classifier call in the throughput run (default: 32)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: as torch chooses)")
    p.add_argument("--json", default=None, help="also write every number to this file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1 or args.warmup < 0:
        p.error("--repeats and --batch-size must be at least 1, --warmup at least 0")
    return args


def read_texts(path: Path) -> list[str]:
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "text" in row:
            texts.append(row["text"])
        else:
            turns = row.get("messages") or row.get("turns") or []
            texts.append("\n".join(t["content"] for t in turns if t.get("role") == "user"))
    return texts


def percentiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return statistics.median(ms), q[94]


def time_each(fn, texts: list[str], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        for t in texts:
            fn(t)
    ms = []
    for _ in range(repeats):
        for t in texts:
            start = time.perf_counter()
            fn(t)
            ms.append((time.perf_counter() - start) * 1000)
    return ms


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from safety.classifier import load_classifier
    from safety.detect import detect
    clf = load_classifier()
    if clf is None:
        print("error: the classifier did not load (see the warning above); run "
              "`python -m safety.train` first", file=sys.stderr)
        return 2
    sets = Path(args.sets)
    texts = read_texts(sets / "crisis.jsonl") + read_texts(sets / "non_crisis.jsonl")

    lexicon = lambda t: detect(t, classifier=None)                       # noqa: E731

    def both(t):
        detect(t, classifier=None)
        clf.scores([t])                  # uncached, as a chat's new turn pays it

    results = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "messages": len(texts)}
    rows = []
    for name, fn in (("lexicon", lexicon), ("lexicon + classifier", both)):
        p50, p95 = percentiles(time_each(fn, texts, args.repeats, args.warmup))
        results[name] = {"p50_ms": p50, "p95_ms": p95}
        rows.append(f"| {name} | single message | {p50:.2f} | {p95:.2f} | |")
    if args.file:
        batch = [r.get("text", "") for r in map(json.loads, Path(args.file).read_text(
            encoding="utf-8").splitlines()) if isinstance(r, dict)]
        from safety.__main__ import FILE_BATCH, chunks
        from safety.learned import WindowClassifier

        def per_second(fn) -> float:
            start = time.perf_counter()
            fn()
            return len(batch) / (time.perf_counter() - start)

        def one_by_one():                # detect() per line, a fresh cache: no batching
            window = WindowClassifier(clf)
            for t in batch:
                detect(t, classifier=window)

        def file_batches():              # what `python -m safety --file` does
            window = WindowClassifier(clf)
            for chunk in chunks(batch, FILE_BATCH):
                window.prefetch([[t] for t in chunk])
                for t in chunk:
                    detect(t, classifier=window)

        clf.scores(batch[:args.batch_size])                      # warm-up
        lex = per_second(lambda: [detect(t, classifier=None) for t in batch])
        cls = per_second(lambda: [clf.scores(batch[i:i + args.batch_size])
                                  for i in range(0, len(batch), args.batch_size)])
        single, batched = per_second(one_by_one), per_second(file_batches)
        results["throughput"] = {"lexicon_per_s": lex, "classifier_per_s": cls,
                                 "detect_one_by_one_per_s": single,
                                 "detect_file_batches_per_s": batched, "n": len(batch)}
        rows.append(f"| lexicon | {len(batch)} texts, one call each | | | {lex:.0f} |")
        rows.append(f"| classifier alone | {len(batch)} texts, batches of {args.batch_size} | | | {cls:.0f} |")
        rows.append(f"| lexicon + classifier | {len(batch)} texts, one detect() each | | | {single:.0f} |")
        rows.append(f"| lexicon + classifier | {len(batch)} texts, `--file` (batches of "
                    f"{FILE_BATCH}) | | | {batched:.0f} |")

    print(f"\n{cpu_name()}, torch threads {torch.get_num_threads()}, "
          f"{len(texts)} messages x {args.repeats} repeats\n")
    print("| path | what | p50 ms | p95 ms | messages/s |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    flags = argv if argv is not None else sys.argv[1:]
    print("\n`" + " ".join(["python bench/bench_safety.py", *flags]) + "`")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
