"""What the benchmark scripts share: the CPU's name for their reports, and child processes that
run one side of a comparison alone (so a peak of memory counts that side only)."""

import json
import platform
import subprocess
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def without_flags(argv: list[str], with_value: tuple[str, ...], alone: tuple[str, ...] = ()) -> list[str]:
    """argv minus the flags a child must not inherit: `with_value` ones and their value (either
    "--flag value" or "--flag=value"), and `alone` ones, which take none."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in with_value:
            skip = True
        elif not (a in alone or a.startswith(tuple(f"{flag}=" for flag in with_value))):
            out.append(a)
    return out


def run_child(script: str | Path, argv: list[str], what: str) -> dict:
    """Runs `python SCRIPT ARGV --child WHAT` in a fresh process and returns the JSON object on
    the last line of its output; a failed child stops the benchmark with the end of its stderr."""
    cmd = [sys.executable, str(Path(script).resolve()), *argv, "--child", what]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"the {what} child failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
