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

Also here, the rest of what makes a run resumable: the state a step leaves (snapshot), putting it
back (restore), the random generators' states, and Ctrl-C, which finishes the step in flight
so that it can be saved (CtrlC).
"""

import json
import os
import pickle
import random
import signal
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


def load_for_resume(out: str | os.PathLike, settings: dict) -> dict:
    """load(), refusing a checkpoint whose run was started with other settings."""
    state = load(out)
    if state["config"] != settings:
        diff = [k for k in state["config"] if state["config"][k] != settings.get(k)]
        raise UserError(f"--resume: this run was started with different settings ({', '.join(diff)}); "
                        "use the same flags or a new --out")
    return state


def snapshot(step: int, settings: dict, history: list, model, optimizer, scheduler, scaler, batcher) -> dict:
    """Everything --resume needs after `step`, as tensors and plain values (weights_only loads it)."""
    return {"step": step, "config": settings, "history": history,
            "lora": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "data": batcher.state_dict(), "rng": rng_state()}


def restore(state: dict, model, optimizer, scheduler, scaler, batcher) -> tuple[int, list]:
    """Puts a snapshot back; returns (step, metrics history)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(state["lora"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    batcher.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    return state["step"], state["history"]


def resume(out, state: dict, write_adapter: Callable[[], None], model, optimizer, scheduler, scaler,
           batcher) -> tuple[int, list]:
    """restore(), then the adapter rewritten if a save was cut short before state.json."""
    step, history = restore(state, model, optimizer, scheduler, scaler, batcher)
    if repair_adapter(out, step, write_adapter):
        print(f"rewrote the adapter in {out} from the checkpoint (step {step}); it was older or incomplete")
    print(f"resumed at step {step} from {Path(out) / CHECKPOINT_NAME}")
    return step, history


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CtrlC:
    """Within `with CtrlC() as ctrl_c:`, a first Ctrl-C only sets ctrl_c.pressed (the loop finishes
    its step, saves and stops); a second one exits at once with status 130, saving nothing."""

    def __init__(self, say: Callable[[str], None] = print):
        self.pressed, self.say = False, say

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.pressed:
            raise SystemExit(130)
        self.say("stopping after this step (Ctrl-C again to abort without saving)")
        self.pressed = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


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
