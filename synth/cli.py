"""`python -m synth patients|respond|refine ...`: the command line over the three stages.

Every flag maps to a field of runner.Settings or an argument of a stage's run_* function.
Bad input and refusals (SynthError) print one line on stderr and exit with status 2.
"""

import argparse
import os
import sys

from synth.dedup import DEFAULT_THRESHOLD
from synth.errors import SynthError
from synth.examples import read_examples
from synth.patients import run_patients
from synth.prompts import DEFAULT_INSTRUCTION
from synth.refine import run_refine
from synth.respond import run_respond
from synth.retry import RetryPolicy
from synth.runner import Settings, print_summary

EPILOG = """\
pipeline:  patients -> respond -> refine, each reading the previous stage's JSONL.
  python -m synth patients --n 200 --out patients.jsonl
  python -m synth respond --in patients.jsonl --out answers.jsonl
  python -m synth refine --in answers.jsonl --out refined.jsonl --threshold 85
  python train.py --data refined.jsonl

A run that stops (Ctrl-C, a crash, a kill) is continued by running the same command again:
ids already in --out, or in its rejected file, are skipped. Rows that failed after every retry
are written nowhere, so the rerun tries them again.

A dead server ends the run early instead of costing every row its retries: a refused
connection at once ("nothing listening at URL"), a server that keeps failing after
--max-consecutive-failures failed requests in a row. --deadline stops starting new work.

exit status: 0 done; 1 some rows failed after every retry, or were not done by --deadline
(rerun to do them); 2 bad input, a refusal (no key, key rejected, unknown model), nothing
listening at --base-url, or too many failed requests in a row, printed as one line (the rows
written so far are kept); 130 interrupted.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _score(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a score from 0 to 100, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {value}")
    return value


def _common_flags(temperature: float) -> argparse.ArgumentParser:
    """The flags every stage shares; `temperature` is that stage's default."""
    p = argparse.ArgumentParser(add_help=False)
    io = p.add_argument_group("output")
    io.add_argument("--out", required=True, metavar="FILE",
                    help="JSONL file to append rows to; rows already in it (or in its "
                         ".rejected.jsonl file) are skipped, so a stopped run resumes")
    io.add_argument("--dry-run", action="store_true",
                    help="print the prompts that would be sent, send nothing, write nothing")
    conn = p.add_argument_group("connection")
    conn.add_argument("--base-url", default=None,
                      help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 "
                           "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)")
    conn.add_argument("--api-key", default=None,
                      help="API key (default: $OPENAI_API_KEY; a --base-url on localhost or "
                           "127.0.0.1 needs none)")
    conn.add_argument("--model", default="gpt-4o-mini",
                      help="model that writes the messages and answers (default: %(default)s)")
    conn.add_argument("--timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                      help="seconds before one request counts as timed out and is retried "
                           "(default: %(default)s)")
    conn.add_argument("--max-retries", type=_non_negative_int, default=6,
                      help="retries per request after 429, 5xx, a timeout, a dropped "
                           "connection or an unusable reply (default: %(default)s)")
    conn.add_argument("--retry-base-delay", type=_non_negative_float, default=1.0,
                      metavar="SECONDS", help="wait before the first retry; it doubles each "
                      "retry, with random jitter (default: %(default)s)")
    conn.add_argument("--retry-max-delay", type=_non_negative_float, default=60.0,
                      metavar="SECONDS", help="longest single wait (default: %(default)s)")
    conn.add_argument("--concurrency", type=_positive_int, default=4,
                      help="requests in flight at once (default: %(default)s)")
    conn.add_argument("--max-consecutive-failures", type=_non_negative_int, default=10,
                      metavar="K", help="stop the run once K requests in a row have failed, "
                      "counted over all rows (any success resets the count): the server is "
                      "down or the model cannot do the task. Keep it above --max-retries + 1, "
                      "so that one request's own retries cannot trip it; 0 never stops "
                      "(default: %(default)s)")
    conn.add_argument("--deadline", type=_non_negative_float, default=None, metavar="SECONDS",
                      help="start no new row or request this many seconds after the start; "
                           "requests in flight finish, rows that need another request are "
                           "left for a rerun (default: no deadline)")
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--temperature", type=_non_negative_float, default=temperature,
                          help="sampling temperature (default: %(default)s)")
    sampling.add_argument("--max-tokens", type=_positive_int, default=512,
                          help="longest reply, in tokens (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="fixes which topic and persona each patient row gets, and is "
                               "sent to the API for best-effort repeatable sampling "
                               "(default: %(default)s)")
    cost = p.add_argument_group("cost")
    cost.add_argument("--price-in", type=_non_negative_float, default=None, metavar="USD",
                      help="$ per 1M prompt tokens, overriding the built-in price table")
    cost.add_argument("--price-out", type=_non_negative_float, default=None, metavar="USD",
                      help="$ per 1M completion tokens, overriding the built-in price table")
    return p


def _safety_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("safety")
    g.add_argument("--keep-unsafe", action="store_true",
                   help="keep rows that safety.row_is_safe flags in --out, with a 'safety' "
                        "field, instead of moving them to <out>.rejected.jsonl")
    g.add_argument("--no-safety-check", action="store_true",
                   help="do not run safety.row_is_safe at all (rows are written unchecked; "
                        "only for debugging or when every row is reviewed by a person)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m synth", description="Synthetic counselling data on any "
        "OpenAI-compatible API: patient messages -> psychologist answers -> expert-refined "
        "answers, as JSONL training rows (instruction, input, output) with provenance.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = stages.add_parser("patients", parents=[_common_flags(temperature=1.0)],
                          help="write varied patient messages from topics and personas",
                          description="Write N patient messages, each from a topic and a "
                          "persona (age, situation, tone, length) fixed by --seed. A message "
                          "that nearly duplicates one already kept is moved to the rejected "
                          "file and another candidate is tried.")
    p.add_argument("--n", type=_positive_int, required=True,
                   help="number of rows --out should hold when the run ends")
    p.add_argument("--dedup-threshold", type=_fraction, default=DEFAULT_THRESHOLD,
                   help="two messages whose 3-word-shingle sets have a Jaccard similarity at "
                        "or above this are near-duplicates (default: %(default)s)")

    p = stages.add_parser("respond", parents=[_common_flags(temperature=0.7)],
                          help="answer each patient message as the psychologist",
                          description="Answer the 'input' of every row of --in; the "
                          "instruction is sent as the system message.")
    p.add_argument("--in", dest="in_path", required=True, metavar="FILE",
                   help="JSONL rows with an 'input' (e.g. from `patients`)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--instruction", default=None,
                       help="the psychologist's instruction (default: the seed project's: "
                            f"\"{DEFAULT_INSTRUCTION}\")")
    which.add_argument("--instruction-file", default=None, metavar="FILE",
                       help="read the instruction from this text file")
    _safety_flags(p)

    p = stages.add_parser("refine", parents=[_common_flags(temperature=0.7)],
                          help="critique, score and rewrite each answer until it is good "
                               "enough",
                          description="An expert evaluator scores each answer from 0 to 100 "
                          "with feedback on accuracy, empathy, clarity, appropriateness and "
                          "gaps; the psychologist rewrites it from that feedback, until the "
                          "score reaches --threshold or --max-rounds rewrites are done. Every "
                          "round is kept; 'output' becomes the best-scoring round.")
    p.add_argument("--in", dest="in_path", required=True, metavar="FILE",
                   help="JSONL rows with 'input' and 'output' (e.g. from `respond`)")
    p.add_argument("--evaluator-model", default=None,
                   help="model that plays the expert evaluator (default: --model)")
    p.add_argument("--threshold", type=_score, default=85.0,
                   help="stop rewriting once an answer scores at least this "
                        "(default: %(default)s)")
    p.add_argument("--max-rounds", type=_non_negative_int, default=3,
                   help="most rewrites per answer; each rewrite is scored again "
                        "(default: %(default)s)")
    p.add_argument("--evaluator-examples", default=None, metavar="FILE",
                   help="JSONL of worked examples, one {\"patient\", \"answer\", \"verdict\"} "
                        "a line, shown to the evaluator as earlier turns before each answer it "
                        "scores; lets a small model copy the reply format (synth/README.md)")
    p.add_argument("--min-score", type=_score, default=0.0,
                   help="rows whose best score stays below this go to the rejected file "
                        "(default: %(default)s, keep all)")
    _safety_flags(p)
    return parser


def _instruction(args) -> str:
    if args.instruction_file is None:
        if args.instruction is not None and not args.instruction.strip():
            raise SynthError("--instruction is empty; give the instruction text, or leave the "
                             "flag out for the default.")
        return args.instruction.strip() if args.instruction else DEFAULT_INSTRUCTION
    try:
        with open(args.instruction_file, encoding="utf-8") as f:
            text = f.read().strip()
    except OSError as e:
        raise SynthError(f"--instruction-file {args.instruction_file} cannot be read "
                         f"({e.strerror}); pass an existing text file.") from None
    if not text:
        raise SynthError(f"--instruction-file {args.instruction_file} is empty; write the "
                         "instruction in it.")
    return text


def settings_from(args) -> Settings:
    return Settings(out=args.out, model=args.model, base_url=args.base_url,
                    api_key=args.api_key, temperature=args.temperature,
                    max_tokens=args.max_tokens, seed=args.seed, timeout=args.timeout,
                    retry=RetryPolicy(args.max_retries, args.retry_base_delay,
                                      args.retry_max_delay),
                    concurrency=args.concurrency,
                    max_consecutive_failures=args.max_consecutive_failures,
                    deadline=args.deadline, dry_run=args.dry_run,
                    price_in=args.price_in, price_out=args.price_out)


def run(args):
    """Run the chosen stage; returns its Summary."""
    settings = settings_from(args)
    in_path = getattr(args, "in_path", None)
    if in_path is not None and os.path.abspath(in_path) == os.path.abspath(args.out):
        raise SynthError(f"--in and --out are the same file ({args.out}); write to a new file.")
    if args.stage == "patients":
        summary = run_patients(settings, args.n, args.dedup_threshold)
    elif args.stage == "respond":
        summary = run_respond(settings, in_path, _instruction(args),
                              check_safety=not args.no_safety_check,
                              keep_unsafe=args.keep_unsafe)
    else:
        examples = read_examples(args.evaluator_examples) if args.evaluator_examples else ()
        summary = run_refine(settings, in_path, evaluator_model=args.evaluator_model,
                             threshold=args.threshold, max_rounds=args.max_rounds,
                             min_score=args.min_score, check_safety=not args.no_safety_check,
                             keep_unsafe=args.keep_unsafe, examples=examples)
    if not settings.dry_run:
        print_summary(summary, settings, args.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except SynthError as error:
        print(f"synth: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synth: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    # rows are missing: a script should notice (a rerun does them)
    return 1 if summary.failed or summary.unfinished else 0
