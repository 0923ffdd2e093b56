"""The run folder's saved state: what --resume needs, kept consistent with the adapter, and
loaded without unpickling code.

A save writes three things in this order, each atomically (a temporary file, then os.replace):

    1. checkpoint.pt   all that --resume needs: the step, LoRA tensors, optimizer, schedule, loss
                       scale, data position, RNG states, metrics history (tensors and plain values)
    2. the adapter     adapter_model.safetensors + adapter_config.json (what generate.py reads)
    3. state.json      {"step": N}, written last: "the adapter on disk is checkpoint step N"

A kill between any two writes leaves checkpoint.pt whole (the old step or the new one) and
state.json naming a step only once the adapter of that step is complete. checkpoint.pt is the
truth: on --resume, when state.json does not name the checkpoint's step, the adapter is rewritten
from the checkpoint's LoRA tensors (repair_adapter), and leftover temporary files are removed.

torch.load runs with weights_only=True: a checkpoint.pt holding anything but tensors and plain
Python values (a crafted pickle, say) is refused, never executed.
"""

import json
import os
import pickle
from pathlib import Path
from typing import Callable

import torch

from model.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
STATE_NAME = "state.json"
TMP_SUFFIX = ".tmp"
REQUIRED_KEYS = ("step", "config", "history", "lora", "optimizer", "scheduler", "scaler", "data", "rng")
# Files of a run folder whose temporary twins (NAME.tmp) a killed save can leave behind. Only
# these are removed: --out may be a folder that also holds the user's own files.
RUN_FILES = (CHECKPOINT_NAME, STATE_NAME, "adapter_model.safetensors", "adapter_config.json",
             "base_model.json")


def save(out: str | os.PathLike, state: dict, write_adapter: Callable[[], None]) -> None:
    """checkpoint.pt, then the adapter (write_adapter writes it from the model), then state.json."""
    out = Path(out)
    _write_atomic(out / CHECKPOINT_NAME, lambda f: torch.save(state, f))
    write_adapter()
    _write_atomic(out / STATE_NAME, lambda f: f.write(json.dumps({"step": state["step"]}).encode()))


def load(out: str | os.PathLike) -> dict:
    """The saved state of the run in out; one-line errors for a missing, damaged or foreign file."""
    path = Path(out) / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(f"{path} holds Python objects besides tensors and plain values, which "
                            "train.py never writes; refusing to load it (delete it or use another --out)") from None
        raise UserError(f"{path} is damaged ({type(e).__name__}); move it away to start the run over, "
                        "or use another --out") from None
    except Exception as e:  # truncated zip, empty file, unreadable: torch's messages run to many lines
        raise UserError(f"{path} is truncated or damaged ({type(e).__name__}); move it away to start "
                        "the run over, or use another --out") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} is not a train.py checkpoint (it has no '{missing[0]}'); "
                        "use another --out")
    return state


def adapter_step(out: str | os.PathLike) -> int | None:
    """The checkpoint step the adapter in out was written at, or None when unknown or incomplete."""
    out = Path(out)
    if not all((out / name).is_file() for name in ("adapter_model.safetensors", "adapter_config.json")):
        return None
    try:
        step = json.loads((out / STATE_NAME).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def repair_adapter(out: str | os.PathLike, step: int, write_adapter: Callable[[], None]) -> bool:
    """Rewrites the adapter (from the model, which holds the checkpoint's LoRA tensors) when
    state.json does not vouch for it at this step. True when it had to."""
    if adapter_step(out) == step:
        return False
    write_adapter()
    _write_atomic(Path(out) / STATE_NAME, lambda f: f.write(json.dumps({"step": step}).encode()))
    return True


def remove_stale_tmp(out: str | os.PathLike) -> list[str]:
    """Deletes the temporary files a killed save left; returns their names."""
    removed = []
    for name in RUN_FILES:
        tmp = Path(out) / (name + TMP_SUFFIX)
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def _write_atomic(path: Path, write: Callable) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
    os.replace(tmp, path)
