"""What a train.py run folder says about how it was trained: train_config.json, every flag of
the run as train.py resolved it (written at the start of a run and again on --resume).

The scripts that use a run read it so that an adapter is used the way it was trained:
generate.py --adapter RUN and evaluate.py --variants RUN take the run's base model (--model),
its 4-bit storage (--quantize nf4) and its prompt format, wherever their own flags leave those
unset. A flag given on the command line always wins.
"""

import json
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
