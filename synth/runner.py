"""Running one stage: resume from --out, fan the rows out to worker threads, judge each finished
row, append it, and report.

    jobs (ids not yet in --out or the rejected file)
      -> at most --concurrency in flight on worker threads: work(job, client) -> row
      -> main thread: judge(row) -> keep, keep flagged, or reject
      -> one atomic line in --out, or in <out>.rejected.jsonl with the reason

Only the main thread writes files and judges rows, so neither needs a lock. A row whose
requests keep failing after every retry is counted as failed and written nowhere: running the
same command again tries it again. A refusal no retry can fix (SynthError: bad key, unknown
model, nothing listening, too many failed requests in a row) stops the whole run at once.

After --deadline seconds no new row and no new request starts: a request in flight finishes,
a row that needs another one is left undone, and the run ends with the rows not done counted
as unfinished (a rerun does them).
"""

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import openai
from tqdm import tqdm

from synth.breaker import CircuitBreaker
from synth.client import ChatClient, Connection, Sampling
from synth.cost import UsageMeter
from synth.errors import BadReply
from synth.jsonl import AppendOnlyJsonl
from synth.retry import Cancelled, DeadlineReached, RetryPolicy

ROW_FAILURES = (openai.APIError, json.JSONDecodeError, BadReply)  # after retries: skip the row
clock = time.monotonic  # seconds; tests put a fake clock here to pass --deadline without waiting


@dataclass
class Settings:
    """The flags every stage shares (see synth/cli.py for what each means)."""

    out: str
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    seed: int = 0
    timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 4
    max_consecutive_failures: int = 10  # 0: never stop for failed requests
    deadline: float | None = None       # seconds after the start; None: no deadline
    dry_run: bool = False
    price_in: float | None = None
    price_out: float | None = None

    def sampling(self, model: str | None = None) -> Sampling:
        return Sampling(model=model or self.model, temperature=self.temperature,
                        max_tokens=self.max_tokens, seed=self.seed)


@dataclass
class Verdict:
    """What to do with a finished row: reason None means clean; otherwise keep it (flagged) or
    send it to the rejected file."""

    reason: str | None = None
    keep: bool = True


def accept_all(row: dict) -> Verdict:
    return Verdict()


@dataclass
class Summary:
    written: int = 0   # lines appended to --out by this run
    skipped: int = 0   # ids already done by an earlier run
    failed: int = 0    # gave up after every retry; a rerun tries them again
    rejected: int = 0  # sent to the rejected file (unsafe, near-duplicate, low score)
    flagged: int = 0   # unsafe but kept, because of --keep-unsafe
    unfinished: int = 0  # not done when --deadline passed; a rerun does them
    local: bool = False  # the server was on this machine: no cost
    usage: UsageMeter = field(default_factory=UsageMeter)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp(row: dict, stage: str) -> dict:
    """created_at gains this stage's time; earlier stages' times are kept."""
    before = row.get("created_at")
    times = dict(before) if isinstance(before, dict) else ({"source": before} if before else {})
    times[stage] = now()
    return times


def rejected_path(out: str) -> str:
    """rows.jsonl -> rows.rejected.jsonl; any other name gets .rejected.jsonl appended."""
    return (out[:-len(".jsonl")] if out.endswith(".jsonl") else out) + ".rejected.jsonl"


def open_outputs(out: str) -> tuple[AppendOnlyJsonl, AppendOnlyJsonl, set[str]]:
    """(--out, the rejected file, ids already done in either)."""
    kept, rejected = AppendOnlyJsonl(out), AppendOnlyJsonl(rejected_path(out))
    return kept, rejected, kept.ids() | rejected.ids()


def log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # prints above the progress bar, not through it


def print_dry_run(jobs: Iterable[dict], preview: Callable[[dict], list[dict]],
                  stage: str) -> None:
    shown = 0
    for job in jobs:
        print(f"=== {job['id']} ({stage}) ===")
        for message in preview(job):
            print(f"[{message['role']}]\n{message['content']}")
        print()
        shown += 1
    print(f"dry run: {shown} prompts shown, nothing sent")


class DaemonPool:
    """`size` daemon threads running work(job); results come back in the order they finish.

    concurrent.futures would do, but its threads keep the process alive until every request in
    flight returns, so Ctrl-C or a rejected key would wait up to --timeout to exit. Daemon
    threads are simply left behind when the run stops.
    """

    def __init__(self, size: int, work: Callable[[dict], dict]):
        self.in_flight = 0
        self._tasks: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._loop, args=(work,), daemon=True)
                         for _ in range(size)]
        for thread in self._threads:
            thread.start()

    def _loop(self, work: Callable[[dict], dict]) -> None:
        while (job := self._tasks.get()) is not None:
            try:
                self._results.put((job, work(job), None))
            except BaseException as error:  # handed to the main thread, which decides
                self._results.put((job, None, error))

    def submit(self, job: dict) -> None:
        self._tasks.put(job)
        self.in_flight += 1

    def next_result(self) -> tuple[dict, dict | None, BaseException | None]:
        """(job, row, None) or (job, None, error), for whichever job finishes next."""
        result = self._results.get()
        self.in_flight -= 1
        return result

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)  # each idle thread ends; a busy one ends after its job


def run_jobs(settings: Settings, stage: str, jobs: Iterator[dict], *,
             work: Callable[[dict, ChatClient], dict], judge: Callable[[dict], Verdict],
             out: AppendOnlyJsonl, rejected: AppendOnlyJsonl, summary: Summary,
             total: int, want: int | None = None) -> Summary:
    """Run work() on every job, at most settings.concurrency at a time.

    `want` stops early: no new job starts once the rows written plus those in flight reach it
    (the `patients` stage asks for N rows and tries more candidates when some are rejected).
    """
    if total == 0:
        return summary  # nothing left to do: no key or server needed
    connection = Connection.resolve(settings.base_url, settings.api_key,
                                    timeout=settings.timeout, retry=settings.retry)
    time_left = None
    if settings.deadline is not None:
        deadline_at = clock() + settings.deadline

        def time_left() -> float:  # seconds before --deadline; read by every worker
            return deadline_at - clock()
    client = ChatClient(connection, summary.usage, log,
                        breaker=CircuitBreaker(settings.max_consecutive_failures),
                        time_left=time_left)
    summary.local = connection.local
    bar = tqdm(total=total, desc=stage, unit="row", disable=None)  # None: off when not a tty
    pool = DaemonPool(settings.concurrency, lambda job: work(job, client))
    past_deadline = False

    def top_up() -> None:
        nonlocal past_deadline
        while pool.in_flight < settings.concurrency:
            # A failed row counts against `want` too: it is not replaced by another candidate,
            # so a server that fails some rows costs at most `want` rows' retries.
            if want is not None and summary.written + summary.failed + pool.in_flight >= want:
                return
            if time_left is not None and time_left() <= 0:
                past_deadline = True
                return
            job = next(jobs, None)
            if job is None:
                return
            pool.submit(job)

    try:
        top_up()
        while pool.in_flight:
            job, row, error = pool.next_result()
            if isinstance(error, DeadlineReached):
                past_deadline = True  # counted with the rows never started, below
                log(f"{job['id']}: left undone at the --deadline; a rerun will do it")
            elif isinstance(error, Cancelled):
                # Another worker stopped the run; its error may still be on its way here.
                raise client.stopped_by or error
            elif isinstance(error, ROW_FAILURES):
                summary.failed += 1
                log(f"{job['id']}: gave up ({type(error).__name__}: {error}); "
                    "a rerun will try it again")
            elif error is not None:
                raise error  # SynthError (bad key, unknown model) or a bug: stop the run
            else:
                verdict = judge(row)
                if verdict.reason is None or verdict.keep:
                    out.append(row)
                    summary.written += 1
                    summary.flagged += verdict.reason is not None
                else:
                    rejected.append({**row, "rejected_reason": verdict.reason})
                    summary.rejected += 1
            bar.update(1)
            top_up()
        if past_deadline:
            # Every job ends written, rejected, failed or undone; for `patients`, rejected
            # candidates are replaced, so only written and failed ones count towards `want`.
            done = summary.written + summary.failed + (0 if want is not None else summary.rejected)
            summary.unfinished = max(0, total - done)
    except BaseException:  # including Ctrl-C: no worker starts another attempt
        client.stop.set()
        raise
    finally:
        pool.close()
        bar.close()
        out.close()
        rejected.close()
    return summary


def print_summary(summary: Summary, settings: Settings, out: str) -> None:
    prompt, completion = summary.usage.totals()
    cost, unpriced = summary.usage.cost(local=summary.local, price_in=settings.price_in,
                                        price_out=settings.price_out)
    lines = [f"rows written: {summary.written} to {out}",
             f"skipped (already done): {summary.skipped}",
             f"failed (rerun to retry): {summary.failed}",
             f"rejected: {summary.rejected} to {rejected_path(out)}"]
    if summary.unfinished:
        lines.append(f"not done when --deadline passed (rerun to continue): {summary.unfinished}")
    if summary.flagged:
        lines.append(f"flagged unsafe but kept (--keep-unsafe): {summary.flagged}")
    lines.append(f"tokens: {prompt} prompt + {completion} completion")
    note = " (local server)" if summary.local else ""
    if unpriced:
        note = f" ({', '.join(unpriced)} not in the price table: counted at 0; " \
               "pass --price-in/--price-out)"
    lines.append(f"estimated cost: ${cost:.4f}{note}")
    print("\n".join(lines))

