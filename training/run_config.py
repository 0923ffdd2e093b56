"""What a train.py run folder says about how it was trained: train_config.json, every flag of
the run as train.py resolved it (written at the start of a run and again on --resume).

The scripts that use a run read it so that an adapter is used the way it was trained:
generate.py --adapter RUN and evaluate.py --variants RUN take the run's base model (--model),
its 4-bit storage (--quantize nf4) and its prompt format, wherever their own flags leave those
unset. A flag given on the command line always wins.
"""

import dataclasses
import json
import sys
from pathlib import Path

from model.errors import UserError

NAME = "train_config.json"


def read_run_config(folder: str | Path) -> dict:
    """The run's flags as a dict; {} for a folder without train_config.json (a plain PEFT
    adapter, say). A file that is not a JSON object is a one-line error naming it."""
    path = Path(folder) / NAME
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path} is not valid JSON ({e}); fix it, or delete it and pass "
                        f"--model and the prompt format yourself") from None
    if not isinstance(run, dict):
        raise UserError(f"{path} holds {type(run).__name__}, not train.py's flags (a JSON object)")
    return run


def write_run_config(out: str | Path, cfg) -> None:
    """train_config.json: every field of train.py's config dataclass, as the run resolved it."""
    (Path(out) / NAME).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def take_base(args, runs: dict[Path, dict], flag: str) -> list[str]:
    """Fills args.model and args.quantize where they are unset (None) from the runs' configs
    (folder -> read_run_config): the base they were trained on, and nf4 when every run trained
    on a 4-bit base. Runs trained on different bases are a one-line error naming `flag`.
    Returns the flags taken, for say_taken."""
    runs = {folder: run for folder, run in runs.items() if run}
    taken = []
    if args.model is None and runs:
        bases = {run.get("model") for run in runs.values()}  # None: the embedded default
        if len(bases) > 1:
            names = ", ".join(f"{folder} ({run.get('model') or 'the embedded default'})"
                              for folder, run in runs.items())
            raise UserError(f"{flag}: these runs were trained on different base models: {names}; "
                            "evaluate each base's runs on their own, or pass --model")
        args.model = bases.pop()
        if args.model:
            taken.append(f"--model {args.model}")
    if args.quantize is None and runs and all(run.get("quantize") == "nf4" for run in runs.values()):
        args.quantize = "nf4"
        taken.append("--quantize nf4")
    return taken


def say_taken(folders, taken: list[str]) -> None:
    """One line on stderr: which run configs filled which flags."""
    if taken:
        where = ", ".join(str(Path(folder) / NAME) for folder in folders)
        print(f"from {where}: {' '.join(taken)} (flags given here win)", file=sys.stderr)
