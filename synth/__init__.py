"""Synthetic counselling data on any OpenAI-compatible API, with the `openai` client only.

    python -m synth patients --n 200 --out patients.jsonl       # topic + persona -> message
    python -m synth respond --in patients.jsonl --out answers.jsonl    # psychologist answers
    python -m synth refine --in answers.jsonl --out refined.jsonl      # evaluator <-> rewrites

Rows are JSONL in the training schema ("instruction", "input", "output") plus provenance, so
`python train.py --data refined.jsonl` takes them as they are. Where each idea lives:

    cli.py          the command line                 runner.py     resume, threads, summary
    patients.py     stage 1                          client.py     one chat call, key, refusals
    respond.py      stage 2                          retry.py      backoff with jitter
    refine.py       stage 3                          jsonl.py      atomic appends, torn-line repair
    prompts.py      every prompt                     cost.py       tokens and dollars
    personas.py     topics and personas              dedup.py      near-duplicate messages
    scoring.py      reading the evaluator's score    safety_gate.py  safety.row_is_safe on rows
    examples.py     the evaluator's worked examples  breaker.py    stop after K failures in a row
"""

from synth.errors import BadReply, SynthError

__all__ = ["SynthError", "BadReply"]
