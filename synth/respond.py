"""Stage 2, `respond`: the psychologist's answer to each patient message.

Each row of --in (from `patients`, or any JSONL with "input") is sent as the user message under
the instruction (the seed's by default) as the system message. The row comes out with
"instruction" and "output" filled in and the provenance of a first draft: "model", "round": 0,
"scores": [], "rounds": [{"text", "feedback": null, "score": null, "model"}].
"""

from synth.client import ChatClient
from synth.jsonl import read_input_rows
from synth.prompts import respond_messages
from synth.runner import Settings, Summary, open_outputs, print_dry_run, run_jobs, stamp
from synth.safety_gate import safety_judge

STALE_KEYS = ("evaluator_model", "safety", "rejected_reason")  # about an earlier answer


def run_respond(settings: Settings, in_path: str, instruction: str, *, check_safety: bool,
                keep_unsafe: bool) -> Summary:
    rows = read_input_rows(in_path, need_output=False)
    out, rejected, done = open_outputs(settings.out)
    todo = [row for row in rows if row["id"] not in done]
    summary = Summary(skipped=len(rows) - len(todo))

    def work(job: dict, client: ChatClient) -> dict:
        text = client.chat(respond_messages(instruction, job["input"]), settings.sampling(),
                           what=f"{job['id']} respond")
        row = {key: value for key, value in job.items() if key not in STALE_KEYS}
        row.update(instruction=instruction, output=text, model=settings.model, round=0,
                   scores=[], rounds=[{"text": text, "feedback": None, "score": None,
                                       "model": settings.model}],
                   created_at=stamp(job, "respond"))
        return row

    if settings.dry_run:
        print_dry_run(todo, lambda job: respond_messages(instruction, job["input"]), "respond")
        return summary
    judge = safety_judge(check=check_safety, keep_unsafe=keep_unsafe)
    return run_jobs(settings, "respond", iter(todo), work=work, judge=judge, out=out,
                    rejected=rejected, summary=summary, total=len(todo))
