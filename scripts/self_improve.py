"""The self-improving loop, offline on a CPU: the embedded model writes, judges and refines its
own training data, is fine-tuned on it, and is evaluated before and after.

    python scripts/self_improve.py                        # defaults: about 10-15 min on 2 CPU cores
    python scripts/self_improve.py --n 40 --train-steps 30 --out runs/loop40

Stages, each a subprocess of the project's own command lines:

    server     python generate.py --serve         the embedded SmolLM2-135M-Instruct on 127.0.0.1
    patients   python -m synth patients --n N      -> OUT/patients.jsonl
    respond    python -m synth respond             -> OUT/answers.jsonl
    refine     python -m synth refine              -> OUT/refined.jsonl  (the same model judges)
    train      python train.py --data OUT/refined.jsonl          -> OUT/run/
    evaluate   python evaluate.py --variants base,OUT/run        -> OUT/eval/results.md
    summary    counts, scores, losses and the results table      -> OUT/summary.md

A stage whose output exists is skipped, so a stopped loop is continued by running the same
command again: synth resumes its own half-written files in OUT/partial/, and train.py resumes
from its checkpoint. Delete a stage's output to run it (and, by hand, the later ones) again.
The server is started only while a synth stage needs it, and always stopped.

Be clear about what this shows. A 135M model is a weak psychologist and a weaker evaluator: it
does not follow the evaluator's JSON instructions on its own, so refine shows it two short
worked examples first (`--evaluator-examples synth/evaluator_examples.jsonl`;
--no-evaluator-examples leaves them out), and even then its scores say little about quality.
The point is that every stage runs end to end, offline, with the same commands a larger model
or a real API would use.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the project's packages import from the root

from model.errors import UserError  # noqa: E402
from model.jsonl import BadLine, jsonl_objects  # noqa: E402
from synth.examples import read_examples  # noqa: E402
from synth.scoring import parse_evaluation  # noqa: E402

SERVED_MODEL = "SmolLM2-135M-Instruct"             # the name generate.py --serve reports
STAGES = ("patients", "respond", "refine", "train", "evaluate")
SYNTH_STAGES = ("patients", "respond", "refine")
SYNTH_FILES = {"patients": "patients.jsonl", "respond": "answers.jsonl", "refine": "refined.jsonl"}
SERVER_START_S = 600  # a model load on two busy cores can take minutes

# Two worked verdicts, written for this loop, with the score first: a small model copies the
# shape of what it has just seen far more reliably than it follows a description of it.
EVALUATOR_EXAMPLES = ROOT / "synth" / "evaluator_examples.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/self-improve",
                   help="folder for every stage's output, the run and summary.md (default: %(default)s)")
    p.add_argument("--n", type=int, default=12, help="patient messages to generate (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=96,
                   help="longest synth reply in tokens: messages, answers, verdicts (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=85.0,
                   help="refine: stop rewriting once an answer scores this (default: %(default)s)")
    p.add_argument("--max-rounds", type=int, default=1,
                   help="refine: most rewrites per answer (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="synth seed: fixes each patient's topic and persona (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one synth request may take before it fails (default: %(default)s)")
    p.add_argument("--keep-unsafe", action="store_true",
                   help="keep rows the safety check flags (marked) instead of rejecting them")
    p.add_argument("--evaluator-examples", action=argparse.BooleanOptionalAction, default=True,
                   help="show the evaluator the two worked verdicts of "
                        "synth/evaluator_examples.jsonl before each answer it scores (synth "
                        "refine --evaluator-examples; default: on; without them the 135M model "
                        "rarely writes a score)")
    p.add_argument("--train-steps", type=int, default=10,
                   help="optimizer steps of train.py on the refined rows (default: %(default)s)")
    p.add_argument("--eval-data", default="data/sample/eval.jsonl",
                   help="held-out rows for train.py's eval loss and evaluate.py (default: %(default)s)")
    p.add_argument("--eval-limit", type=int, default=8,
                   help="evaluate.py: evaluation rows each variant answers (default: %(default)s)")
    p.add_argument("--eval-max-new-tokens", type=int, default=64,
                   help="evaluate.py: answer length limit in tokens (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of each subprocess; 1 is by far the fastest on a busy "
                        "machine (waiting threads spin), raise it on idle cores (default: %(default)s)")
    p.add_argument("--port", type=int, default=0,
                   help="port of the model server on 127.0.0.1 (default: 0, any free port)")
    return p


# ---------------------------------------------------------------------------- which stages run

def last_eval_step(metrics_path: Path) -> int:
    """The step of the last record in train.py's metrics.jsonl that has an eval loss (0 if none)."""
    if not metrics_path.is_file():
        return 0
    steps = [0] + [int(record["step"]) for record in read_jsonl(metrics_path)
                   if "eval_loss" in record]
    return steps[-1]


def stage_done(stage: str, out: Path, train_steps: int) -> bool:
    """A stage is done when its output exists; training when it reached train_steps."""
    if stage in SYNTH_STAGES:
        return (out / SYNTH_FILES[stage]).is_file()  # moved there only when the stage ended
    if stage == "train":
        run = out / "run"
        return (run / "adapter_model.safetensors").is_file() and \
            last_eval_step(run / "metrics.jsonl") >= train_steps
    if stage == "evaluate":
        return (out / "eval" / "results.md").is_file()
    raise ValueError(f"unknown stage {stage!r}")


def stages_to_run(out: Path, train_steps: int) -> list[str]:
    return [s for s in STAGES if not stage_done(s, out, train_steps)]


# ---------------------------------------------------------------------------- subprocesses

def run_cli(args: list[str], env: dict | None = None) -> int:
    """Runs `python ARGS` in the repository root; returns its exit status."""
    print(f"$ python {' '.join(args)}", flush=True)
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child had the same Ctrl-C: let it save its state and exit
        try:
            proc.wait(timeout=120)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def model_server(port: int, max_new_tokens: int, log_path: Path):
    """`python generate.py --serve` on 127.0.0.1; yields its URL once GET /v1/models answers,
    and always stops it on the way out (done, error, Ctrl-C or SIGTERM)."""
    url = f"http://127.0.0.1:{port or free_port()}"
    cmd = ["generate.py", "--serve", "--port", url.rsplit(":", 1)[1],
           "--max-new-tokens", str(max_new_tokens)]
    print(f"$ python {' '.join(cmd)}  (log: {log_path})", flush=True)
    # The server is this loop's own, on loopback: a LLAMACARE_API_KEY meant for the user's own
    # server must not make it demand a key that synth does not send. It is a tool, not a chat
    # with a person: its "user" turns are synth's requests, and the judge's quote a patient and
    # an answer beside worked examples. The trained crisis classifier reads such a quote as the
    # sender's own words and would answer it with crisis resources instead of a score, so this
    # server runs the lexicon alone; synth still checks every row with the full safety layer.
    env = {k: v for k, v in os.environ.items() if k != "LLAMACARE_API_KEY"}
    env["LLAMACARE_SAFETY_CLASSIFIER"] = "0"
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise UserError(f"the model server exited with status {proc.returncode}; "
                                f"read {log_path} for why")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5):
                    break
            except OSError:  # not listening yet
                if time.monotonic() > deadline:
                    raise UserError(f"the model server gave no answer in {SERVER_START_S} s; "
                                    f"read {log_path} for why") from None
                time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------- the stages

def rejected_name(name: str) -> str:
    """synth's rejected file for an output: answers.jsonl -> answers.rejected.jsonl."""
    return name[: -len(".jsonl")] + ".rejected.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a file a stage wrote; [] when it does not exist. A line torn by a kill is
    left out (the stage itself repairs it when it runs again)."""
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        return [row for _, row in jsonl_objects(f) if not isinstance(row, BadLine)]


def synth_command(stage: str, args, out: Path, base_url: str) -> list[str]:
    """The `python -m synth STAGE ...` arguments of one stage, writing to OUT/partial/."""
    partial = out / "partial" / SYNTH_FILES[stage]
    # synth's default concurrency: the server decodes its requests in one batch. --max-retries
    # 0: one reply takes seconds on a CPU, so a row with an unusable one fails at once (the
    # summary counts it); synth's circuit breaker still ends a stage whose server stopped answering.
    cmd = ["-m", "synth", stage, "--out", str(partial), "--base-url", base_url + "/v1",
           "--model", SERVED_MODEL, "--max-retries", "0",
           "--timeout", str(args.timeout), "--max-tokens", str(args.max_tokens),
           "--seed", str(args.seed)]
    if stage == "patients":
        cmd += ["--n", str(args.n)]
    else:
        previous = SYNTH_STAGES[SYNTH_STAGES.index(stage) - 1]
        cmd += ["--in", str(out / SYNTH_FILES[previous])]
        cmd += ["--keep-unsafe"] if args.keep_unsafe else []
    if stage == "refine":
        cmd += ["--threshold", str(args.threshold), "--max-rounds", str(args.max_rounds)]
        cmd += ["--evaluator-examples", str(EVALUATOR_EXAMPLES)] if args.evaluator_examples else []
    return cmd


def synth_stage(stage: str, args, out: Path, base_url: str):
    """One synth stage into OUT/partial/ (where synth itself resumes), then moved to OUT/."""
    name = SYNTH_FILES[stage]
    partial = out / "partial" / name
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = synth_command(stage, args, out, base_url)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    code = run_cli(cmd, env)
    if code == 130:
        raise KeyboardInterrupt
    if code not in (0, 1):  # 1 = some rows failed; the others are good
        raise UserError(f"`python -m synth {stage}` failed with exit status {code} (its message "
                        "is above); fix that and run this command again")
    if not read_jsonl(partial):
        raise UserError(f"`python -m synth {stage}` wrote no rows to {partial}; see the messages "
                        f"above and {partial.parent / rejected_name(name)}, then run this command again")
    if code == 1:
        print(f"note: some rows failed in {stage} (see above); going on with the rows written")
    rejected = partial.parent / rejected_name(name)
    if rejected.is_file():
        os.replace(rejected, out / rejected.name)
    os.replace(partial, out / name)  # last: its presence in OUT marks the stage as done
    if not any(partial.parent.iterdir()):
        partial.parent.rmdir()


def check(code: int, what: str):
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise UserError(f"`python {what}` failed with exit status {code} (its message is above); "
                        "fix that and run this command again")


def train_stage(args, out: Path, eval_data: Path):
    run = out / "run"
    # --eval-every = the step count: an eval loss at step 0 and at the end, the before/after.
    cmd = ["train.py", "--data", str(out / "refined.jsonl"), "--eval-data", str(eval_data),
           "--out", str(run), "--max-steps", str(args.train_steps),
           "--eval-every", str(args.train_steps), "--save-every", "0"]
    if (run / "checkpoint.pt").is_file():  # a stopped run, or one asked for more steps now
        cmd.append("--resume")
    check(run_cli(cmd), "train.py")


def evaluate_stage(args, out: Path, eval_data: Path):
    cmd = ["evaluate.py", "--variants", f"base,{out / 'run'}", "--data", str(eval_data),
           "--limit", str(args.eval_limit), "--max-new-tokens", str(args.eval_max_new_tokens),
           "--out", str(out / "eval")]
    check(run_cli(cmd), "evaluate.py")


# ---------------------------------------------------------------------------- the summary

def example_scores() -> list[float]:
    """The scores of the worked verdicts refine shows the evaluator."""
    return [parse_evaluation(e.verdict).score for e in read_examples(str(EVALUATOR_EXAMPLES))]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def summarize(out: Path, threshold: float, timings: dict[str, float]) -> str:
    """The summary, from the files the stages left in OUT."""
    rows = {name: read_jsonl(out / name) for name in SYNTH_FILES.values()}
    rejected = {name: read_jsonl(out / rejected_name(name)) for name in SYNTH_FILES.values()}
    patients, answers, refined = (rows[SYNTH_FILES[s]] for s in SYNTH_STAGES)

    def unsafe(name: str) -> int:
        return sum(str(r.get("rejected_reason", "")).startswith("unsafe") for r in rejected[name])

    answers_failed = len(patients) - len(answers) - len(rejected["answers.jsonl"])
    refined_failed = len(answers) - len(refined) - len(rejected["refined.jsonl"])
    first = _mean([r["scores"][0] for r in refined if r.get("scores")])
    best = _mean([max(r["scores"]) for r in refined if r.get("scores")])
    reached = sum(bool(r.get("scores")) and max(r["scores"]) >= threshold for r in refined)
    rewrites = sum(max(0, len(r.get("scores", [])) - 1) for r in refined)
    flagged = sum("safety" in r for r in refined)
    given = sorted({s for r in refined for s in r.get("scores", [])})
    echoes = sum(" ".join(r["input"].split()[:8]) in r["output"] for r in refined)

    metrics = read_jsonl(out / "run" / "metrics.jsonl")
    losses = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    steps = max([m.get("step", 0) for m in metrics], default=0)
    table_path = out / "eval" / "results.md"
    table = table_path.read_text().strip() if table_path.is_file() else "(not evaluated yet)"

    lines = [
        "# Self-improving loop: summary", "",
        f"Data (python -m synth; {SERVED_MODEL} writes the patients, answers, verdicts and rewrites):",
        f"- patient messages: {len(patients)} "
        f"({len(rejected['patients.jsonl'])} near-duplicate candidates rejected)",
        f"- answers: {len(answers)} kept, {unsafe('answers.jsonl')} rejected by the safety check, "
        f"{max(0, answers_failed)} failed",
        f"- refined: {len(refined)} kept{f' ({flagged} flagged unsafe, kept by --keep-unsafe)' if flagged else ''}, "
        f"{unsafe('refined.jsonl')} rejected by the safety check, {max(0, refined_failed)} failed "
        "(no score in the evaluator's reply, or a timeout)",
        f"- evaluator score (0-100), mean over kept rows: first draft {_num(first)} -> kept draft "
        f"{_num(best)}; {rewrites} rewrites, {reached} of {len(refined)} rows reached {threshold:g}",
        "  (the kept draft is the best-scoring one, so its mean cannot be lower than the first's)",
        f"- kept answers that repeat the patient's opening words: {echoes} of {len(refined)}",
        f"- every score the evaluator gave: {', '.join(f'{s:g}' for s in given) or 'none'} "
        f"(the worked examples show {', '.join(f'{s:g}' for s in example_scores())})",
        "",
        f"Training (train.py, {steps} steps on {len(refined)} refined rows):",
        f"- eval loss on the held-out rows: before {_num(losses[0] if losses else None, '.4f')} "
        f"-> after {_num(losses[-1] if len(losses) > 1 else None, '.4f')}",
        "",
        "Evaluation (evaluate.py: base model vs the trained adapter 'run'):", "", table, "",
        "Wall time per stage of this run (s): "
        + (", ".join(f"{k} {v:.0f}" for k, v in timings.items()) or "every stage was already done"),
        "",
        f"Read this with care: {SERVED_MODEL} has 135M parameters. It is a weak psychologist and",
        "a weaker evaluator: its scores mostly echo the worked examples' numbers rather than judge",
        "the answer, and a few steps on a dozen of its own answers are not expected to make it",
        "better. What the run shows is that every stage works end to end, offline; the same",
        "commands with a stronger model behind `python -m synth --base-url` make data worth training on.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main

def check_args(args) -> Path:
    """Rejects bad flag values with one sentence; returns the evaluation rows' path."""
    for flag, value, low in (("--n", args.n, 1), ("--max-tokens", args.max_tokens, 1),
                             ("--max-rounds", args.max_rounds, 0), ("--train-steps", args.train_steps, 1),
                             ("--threads", args.threads, 1),
                             ("--eval-limit", args.eval_limit, 1),
                             ("--eval-max-new-tokens", args.eval_max_new_tokens, 1)):
        if value < low:
            raise UserError(f"{flag} must be {low} or more, got {value}")
    if not 0 <= args.threshold <= 100:
        raise UserError(f"--threshold is a score from 0 to 100, got {args.threshold}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {args.port}")
    eval_data = Path(args.eval_data)
    if not eval_data.is_file():
        eval_data = ROOT / args.eval_data  # the default, when run from another folder
    if not eval_data.is_file():
        raise UserError(f"--eval-data {args.eval_data}: no such file; give a JSONL file of "
                        "evaluation rows")
    return eval_data.resolve()


def timed(label: str, timings: dict, fn, *fn_args):
    print(f"\n== {label}", flush=True)
    t0 = time.perf_counter()
    fn(*fn_args)
    timings[label] = time.perf_counter() - t0
    print(f"== {label}: {timings[label]:.0f} s", flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    eval_data = check_args(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # read by torch in every subprocess
        os.environ[name] = str(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally blocks below
    start = time.perf_counter()
    timings = {}  # this run's stages only: a resumed loop skips what is done

    todo = stages_to_run(out, args.train_steps)
    for stage in STAGES:
        print(f"{stage:>9}: {'to run' if stage in todo else 'done, skipped'}")
    synth_todo = [s for s in todo if s in SYNTH_STAGES]
    if synth_todo:
        print("\n== server start", flush=True)
        t0 = time.perf_counter()
        with model_server(args.port, args.max_tokens, out / "server.log") as server_url:
            timings["server start"] = time.perf_counter() - t0
            print(f"== server start: {timings['server start']:.0f} s ({server_url})", flush=True)
            for stage in synth_todo:
                timed(stage, timings, synth_stage, stage, args, out, server_url)
        print("(model server stopped)")
    if "train" in todo:
        timed("train", timings, train_stage, args, out, eval_data)
    if "evaluate" in todo:
        timed("evaluate", timings, evaluate_stage, args, out, eval_data)

    summary = summarize(out, args.threshold, timings)
    (out / "summary.md").write_text(summary)
    print("\n" + summary)
    print(f"total wall time of this run: {(time.perf_counter() - start) / 60:.1f} min; "
          f"summary: {out / 'summary.md'}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("\nstopped; run the same command again to continue where the loop left off",
              file=sys.stderr)
        sys.exit(130)
