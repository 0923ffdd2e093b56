"""Stage 1, `patients`: varied patient messages, near-duplicates filtered out.

Candidate k gets id "patient-<seed>-<k>" and the topic and persona that --seed fixes for k
(synth/personas.py). Candidates are tried in order until --out holds N rows; a message that
nearly duplicates one already kept (synth/dedup.py) goes to the rejected file instead, and the
next candidate is tried. A candidate whose request fails after every retry is not replaced: it
counts against N (the run ends with fewer rows, exit status 1, and a rerun tries it again), so
a server that fails some rows costs at most N candidates. At most CANDIDATES_PER_ROW * N
candidates are tried, so a model that keeps repeating itself ends the run instead of looping
for ever.

A row is {"id", "instruction", "input": the message, "output": "", "topic", "persona", "model",
"seed", "created_at"}; `respond` fills in "output". Patient rows are not passed through the
safety check: they have no answer yet, and hard messages are exactly what the assistant must
learn to answer well.
"""

from dataclasses import asdict
from itertools import islice
from typing import Iterator

from synth.client import ChatClient
from synth.dedup import NearDuplicateIndex
from synth.errors import BadReply
from synth.personas import persona_for, topic_for
from synth.prompts import DEFAULT_INSTRUCTION, patient_messages
from synth.runner import (Settings, Summary, Verdict, open_outputs, print_dry_run, run_jobs,
                          stamp)

CANDIDATES_PER_ROW = 3


def candidate_id(seed: int, index: int) -> str:
    return f"patient-{seed}-{index:05d}"


def clean_message(text: str) -> str:
    """The message without the quotes or label a model sometimes wraps it in."""
    text = text.strip()
    if text.lower().startswith("message:"):
        text = text[len("message:"):].strip()
    text = text.strip('"\u201c\u201d').strip()
    if not text:
        raise BadReply("the message was empty once its quotes were removed")
    return text


def run_patients(settings: Settings, n: int, dedup_threshold: float) -> Summary:
    out, rejected, done = open_outputs(settings.out)
    kept = NearDuplicateIndex(dedup_threshold)
    for row in out.rows:
        kept.add(str(row.get("id")), row.get("input", ""))
    want = max(0, n - len(out.rows))
    summary = Summary(skipped=len(done))

    def jobs() -> Iterator[dict]:
        for index in range(CANDIDATES_PER_ROW * n):
            if candidate_id(settings.seed, index) not in done:
                yield {"id": candidate_id(settings.seed, index), "index": index}

    def preview(job: dict) -> list[dict]:
        index = job["index"]
        return patient_messages(topic_for(settings.seed, index), persona_for(settings.seed, index))

    def work(job: dict, client: ChatClient) -> dict:
        topic = topic_for(settings.seed, job["index"])
        persona = persona_for(settings.seed, job["index"])
        text = client.chat(patient_messages(topic, persona), settings.sampling(),
                           what=f"{job['id']} patient", parse=clean_message)
        return {"id": job["id"], "instruction": DEFAULT_INSTRUCTION, "input": text,
                "output": "", "topic": topic, "persona": asdict(persona),
                "model": settings.model, "seed": settings.seed,
                "created_at": stamp({}, "patients")}

    def judge(row: dict) -> Verdict:
        match = kept.find(row["input"])
        if match is not None:
            return Verdict(reason=f"near-duplicate of {match[0]} (Jaccard {match[1]:.2f})",
                           keep=False)
        kept.add(row["id"], row["input"])
        return Verdict()

    if settings.dry_run:
        print_dry_run(islice(jobs(), want), preview, "patients")
        return summary
    return run_jobs(settings, "patients", jobs(), work=work, judge=judge, out=out,
                    rejected=rejected, summary=summary, total=want, want=want)
