"""Stage 3, `refine`: an expert evaluator critiques each answer, the psychologist rewrites it.

    round 0:  evaluate the answer from --in                      -> score, feedback
    round r:  rewrite using round r-1's feedback, evaluate again -> score, feedback
    stop when a score reaches --threshold, or after --max-rounds rewrites

Every round is kept in "rounds" ({"text", "feedback", "score", "model"}) and its score in
"scores". "output" is the best-scoring round's text (the latest of equal scores), "round" says
which round that was and "model" who wrote it; "evaluator_model" names the judge. With
--min-score, a row whose best score stays below it goes to the rejected file. With
--evaluator-examples, every evaluate request shows those worked examples first (examples.py).
"""

from typing import Sequence

from synth.client import ChatClient
from synth.examples import WorkedExample
from synth.jsonl import read_input_rows
from synth.prompts import DEFAULT_INSTRUCTION, evaluator_messages, rewrite_messages
from synth.runner import (Settings, Summary, Verdict, open_outputs, print_dry_run, run_jobs,
                          stamp)
from synth.safety_gate import safety_judge
from synth.scoring import Evaluation, parse_evaluation

STALE_KEYS = ("safety", "rejected_reason")  # about the answer before refinement


def run_refine(settings: Settings, in_path: str, *, evaluator_model: str | None,
               threshold: float, max_rounds: int, min_score: float, check_safety: bool,
               keep_unsafe: bool, examples: Sequence[WorkedExample] = ()) -> Summary:
    rows = read_input_rows(in_path, need_output=True)
    out, rejected, done = open_outputs(settings.out)
    todo = [row for row in rows if row["id"] not in done]
    summary = Summary(skipped=len(rows) - len(todo))
    evaluator_model = evaluator_model or settings.model

    def evaluate(client: ChatClient, job: dict, answer: str, round_no: int) -> Evaluation:
        return client.chat(evaluator_messages(job["input"], answer, examples),
                           settings.sampling(evaluator_model),
                           what=f"{job['id']} evaluate round {round_no}", parse=parse_evaluation)

    def work(job: dict, client: ChatClient) -> dict:
        instruction = job.get("instruction") or DEFAULT_INSTRUCTION
        text, author = job["output"], job.get("model")
        rounds = []
        while True:
            review = evaluate(client, job, text, len(rounds))
            rounds.append({"text": text, "feedback": review.feedback, "score": review.score,
                           "model": author})
            if review.score >= threshold or len(rounds) > max_rounds:
                break
            text = client.chat(rewrite_messages(instruction, job["input"], text,
                                                review.feedback),
                               settings.sampling(), what=f"{job['id']} rewrite {len(rounds)}")
            author = settings.model
        best = max(range(len(rounds)), key=lambda i: (rounds[i]["score"], i))
        row = {key: value for key, value in job.items() if key not in STALE_KEYS}
        row.update(instruction=instruction, output=rounds[best]["text"],
                   model=rounds[best]["model"], evaluator_model=evaluator_model, round=best,
                   scores=[r["score"] for r in rounds], rounds=rounds,
                   created_at=stamp(job, "refine"))
        return row

    if settings.dry_run:
        print("(only each row's first evaluation is shown: rewrites depend on the replies)")
        print_dry_run(todo, lambda job: evaluator_messages(job["input"], job["output"],
                                                           examples), "refine")
        return summary
    safety = safety_judge(check=check_safety, keep_unsafe=keep_unsafe)

    def judge(row: dict) -> Verdict:
        best = max(row["scores"])
        if best < min_score:
            return Verdict(reason=f"best score {best} is below --min-score {min_score}",
                           keep=False)
        return safety(row)

    return run_jobs(settings, "refine", iter(todo), work=work, judge=judge, out=out,
                    rejected=rejected, summary=summary, total=len(todo))
