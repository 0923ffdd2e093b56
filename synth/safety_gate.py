"""The safety check every finished row passes before it is written.

It asks the project's `safety` package, `row_is_safe(instruction, input, output) -> (ok, info)`.
An unsafe row gets a "safety" field with that info; by default it then goes to the rejected file
with the reason, and with --keep-unsafe it stays in the output, flagged.

`safety` is imported when a run starts, not when synth is imported, so `python -m synth --help`
and --dry-run work without it.
"""

import json
from typing import Callable

from synth.errors import SynthError
from synth.runner import Verdict, accept_all


def _plain(info) -> dict:
    """info as plain JSON data (anything unusual becomes its str), so the row can be written."""
    return json.loads(json.dumps(info if isinstance(info, dict) else {"info": info}, default=str))


def safety_judge(*, check: bool, keep_unsafe: bool) -> Callable[[dict], Verdict]:
    if not check:
        return accept_all
    try:
        from safety import row_is_safe
    except ImportError as error:
        raise SynthError(f"the safety package cannot be imported ({error}); run from the "
                         "repository root, or pass --no-safety-check to write rows "
                         "unchecked.") from None

    def judge(row: dict) -> Verdict:
        ok, info = row_is_safe(row["instruction"], row["input"], row["output"])
        if ok:
            return Verdict()
        row["safety"] = _plain(info)
        reasons = row["safety"].get("reasons") or ["flagged by safety.row_is_safe"]
        return Verdict(reason="unsafe: " + ", ".join(map(str, reasons)), keep=keep_unsafe)

    return judge
