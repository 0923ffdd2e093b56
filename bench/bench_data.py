"""Peak memory of loading and tokenizing a big, dirty JSON Lines file, against its size.

    python bench/bench_data.py                        # 10, 40 and 160 MB files
    python bench/bench_data.py --sizes 5 20           # quicker
    python bench/bench_data.py --json data.json       # every number to a file too

Each file is written to a temporary folder (--workdir) and holds, by bytes, --big-share rows
with one --big-mb MB field (the output, the input or the instruction, in turn) and the rest
ordinary rows (the bundled rows, each made unique), plus, every --bad-every lines, a malformed
JSON line or a line that is not UTF-8 (in turn). `--sizes 630 --big-share 0.98` makes a file
like the one the previous loader was measured on (630 MB, about 10,000 lines, 1 MB fields).

For each file a child process (this script with --child FILE) does what train.py does with it:
loads the tokenizer (the embedded SmolLM2-135M-Instruct's), then
data.load_rows(FILE, max_chars=data.field_char_limit(--max-len)), then
data.build_examples(rows, tokenizer, "chat", --max-len), and reports
resource.getrusage(RUSAGE_SELF).ru_maxrss after each step. A first child that only loads the
tokenizer gives the floor every child starts from.

The reference side (--no-naive leaves it out) is the straightforward loader, in a child of its
own on the same file: read the whole file, split it into lines, skip the lines json.loads
refuses, tokenize every field whole (the same chat formatting, data.format.encode_row without a
field cut) and only then truncate to --max-len. It keeps the same rows (the bad lines are
skipped, not fatal, so both sides do the same work) and makes the same examples; the difference
in peak RSS is what streaming and cutting fields before tokenizing save.
"""

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name, run_child  # noqa: E402

MB = 1_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=float, nargs="+", default=[10, 40, 160], metavar="MB",
                   help="file sizes to measure, in MB (default: 10 40 160)")
    p.add_argument("--max-len", type=int, default=512,
                   help="--max-len of the examples, which sets the field cut (default: 512)")
    p.add_argument("--big-mb", type=float, default=1.0,
                   help="size of the one long field in a big row, in MB (default: 1)")
    p.add_argument("--big-share", type=float, default=0.5,
                   help="share of the file's bytes in rows with a long field (default: 0.5)")
    p.add_argument("--bad-every", type=int, default=500,
                   help="a malformed or non-UTF-8 line after every this many rows (default: 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated text (default: 0)")
    p.add_argument("--workdir", default=None,
                   help="folder for the generated files (default: a new temporary folder, deleted "
                        "at the end)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE as JSON")
    p.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the straightforward loader on each file (default: on)")
    p.add_argument("--child", default=None, metavar="FILE",
                   help="internal: load and tokenize FILE (or only load the tokenizer, with the "
                        "value 'floor') and print the peaks as one JSON line")
    args = p.parse_args(argv)
    if min(args.sizes) <= 0 or args.big_mb <= 0 or args.bad_every < 1 \
            or not 0 <= args.big_share < 1:
        p.error("--sizes and --big-mb must be above 0, --big-share in [0, 1), --bad-every at "
                "least 1")
    return args


# ----------------------------------------------------------------------------- the files
def sample_rows() -> list[dict]:
    lines = (ROOT / "data" / "sample" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def long_text(n_chars: int, rows: list[dict], rng: random.Random) -> str:
    """n_chars of words from the bundled replies, with a line break now and then."""
    words = " ".join(r["output"] for r in rows).split()
    parts, size = [], 0
    while size < n_chars:
        part = rng.choice(words) + ("\n" if rng.random() < 0.03 else " ")
        parts.append(part)
        size += len(part)
    return "".join(parts)[:n_chars].strip()


def write_file(path: Path, size: int, big_chars: int, bad_every: int, seed: int,
               big_share: float = 0.5) -> dict:
    """Writes about `size` bytes of rows to `path`; returns what it holds."""
    rng = random.Random(seed)
    rows = sample_rows()
    big = long_text(big_chars, rows, rng)
    counts = {"lines": 0, "big_rows": 0, "malformed": 0, "not_utf8": 0}
    written = big_written = 0
    with open(path, "wb") as f:
        i = 0
        while written < size:
            row = dict(rows[i % len(rows)])
            row["input"] = f"{row['input']} (#{i})"  # every row unique, so none is a duplicate
            if big_written < big_share * written and written + big_chars < size:
                field = ("output", "input", "instruction")[counts["big_rows"] % 3]
                row[field] = big
                row["output" if field != "output" else "input"] += f" (#{i})"
                counts["big_rows"] += 1
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            if row["output"] is big or row["input"] is big or row["instruction"] is big:
                big_written += len(line)
            if i and i % bad_every == 0:  # a bad line, malformed and not UTF-8 in turn
                kind = "malformed" if (i // bad_every) % 2 else "not_utf8"
                if kind == "malformed":
                    bad = line[: len(line) // 2] + b"\n"  # the JSON stops half-way
                else:
                    bad = line.replace(b"(#", b"(\xe9#", 1)  # a latin-1 e-acute
                counts[kind] += 1
                f.write(bad)
                written += len(bad)
                counts["lines"] += 1
            f.write(line)
            written += len(line)
            counts["lines"] += 1
            i += 1
    counts["bytes"] = written
    return counts


# ----------------------------------------------------------------------------- the child
def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> dict:
    from data import build_examples, field_char_limit, load_rows
    from model import load_tokenizer
    from model.checkpoint.gguf import default_model_dir

    tokenizer = load_tokenizer(default_model_dir())
    out = {"rss_floor_mib": peak_mib()}
    if args.child == "floor":
        return out
    if args.child.startswith("naive:"):
        return {**out, **naive_child(args.child[len("naive:"):], tokenizer, args.max_len)}
    t0 = time.perf_counter()
    rows, stats = load_rows(args.child, max_chars=field_char_limit(args.max_len))
    out.update(rss_load_mib=peak_mib(), load_s=time.perf_counter() - t0, kept=stats.kept,
               malformed=stats.malformed, not_utf8=stats.not_utf8, capped=stats.capped,
               summary=stats.summary())
    t0 = time.perf_counter()
    examples, fstats = build_examples(rows, tokenizer, "chat", args.max_len, progress=False)
    out.update(rss_format_mib=peak_mib(), format_s=time.perf_counter() - t0,
               examples=len(examples), tokens=fstats.tokens, longest=fstats.longest)
    return out


def naive_child(path: str, tokenizer, max_len: int) -> dict:
    """The straightforward loader: the whole file in memory, every field tokenized whole, then
    truncated. Same rows, same formatting, same examples as ours."""
    from data.format import _to_example, chat_format_for, encode_row
    from data.rows import Row

    t0 = time.perf_counter()
    rows = []
    for line in Path(path).read_bytes().splitlines():  # the whole file at once
        try:
            record = json.loads(line)
        except ValueError:  # malformed JSON and non-UTF-8 lines alike
            continue
        rows.append(Row(*(str(record.get(k) or "").strip() for k in ("instruction", "input", "output"))))
    out = {"rss_load_mib": peak_mib(), "load_s": time.perf_counter() - t0, "kept": len(rows)}
    t0 = time.perf_counter()
    chat = chat_format_for(tokenizer, "chat")
    examples, tokens = [], 0
    for row in rows:
        prompt, reply = encode_row(row, tokenizer, "chat", chat)  # no cut: every field whole
        example, _ = _to_example(prompt, reply, max_len, tokenizer)
        examples.append(example)
        tokens += len(example.input_ids)
    out.update(rss_format_mib=peak_mib(), format_s=time.perf_counter() - t0,
               examples=len(examples), tokens=tokens)
    return out


# ----------------------------------------------------------------------------- the report
def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    child_argv = ["--max-len", str(args.max_len)]
    results = []
    try:
        floor = run_child(__file__, child_argv, "floor")["rss_floor_mib"]
        for size_mb in args.sizes:
            path = workdir / f"rows_{size_mb:g}mb.jsonl"
            made = write_file(path, int(size_mb * MB), int(args.big_mb * MB), args.bad_every,
                              args.seed, args.big_share)
            measured = run_child(__file__, child_argv, str(path))
            if args.naive:
                naive = run_child(__file__, child_argv, f"naive:{path}")
                measured.update({f"naive_{k}": v for k, v in naive.items()})
            results.append({"size_mb": size_mb, **made, **measured})
            print(f"{path.name}: {measured['summary']}", file=sys.stderr)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nLoading + tokenizing (chat template, max-len {args.max_len}) on {cpu_name()}; "
          f"the tokenizer alone: {floor:.0f} MiB peak RSS\n")
    naive = args.naive
    print("| file MB | lines | big rows | rows kept | malformed skipped | non-UTF-8 skipped "
          "| fields cut | tokens | peak RSS after load, MiB | peak RSS after tokenizing, MiB "
          "| load s | tokenize s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        both = lambda key, fmt: (f"{r[key]:{fmt}} / {r['naive_' + key]:{fmt}}"  # noqa: E731
                                 if naive else f"{r[key]:{fmt}}")
        print(f"| {r['bytes'] / MB:.1f} | {r['lines']} | {r['big_rows']} | {both('kept', 'd')} "
              f"| {r['malformed']} | {r['not_utf8']} | {r['capped']} | {both('tokens', 'd')} "
              f"| {both('rss_load_mib', '.0f')} | {both('rss_format_mib', '.0f')} "
              f"| {both('load_s', '.1f')} | {both('format_s', '.1f')} |")
    if naive:
        print("\nTwo figures: ours / the straightforward loader (the whole file read at once, "
              "every field tokenized whole, then truncated), each in a child process of its own "
              "on the same file.")
    print(f"\ncommand: python bench/bench_data.py {' '.join(sys.argv[1:])}".rstrip())
    if args.json:
        Path(args.json).write_text(json.dumps({"floor_mib": floor, "results": results}, indent=2))


if __name__ == "__main__":
    main()
