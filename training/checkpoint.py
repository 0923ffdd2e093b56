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

Under torchrun (training/distributed.py) rank 0 writes the same three files, with the full LoRA
tensors gathered from every rank, while the optimizer state is written by every rank, each its
own shard, with torch.distributed.checkpoint (DCP) into optimizer-stepN/, which checkpoint.pt
names. DCP reshards on load: the run resumes on any number of ranks, or in one process. The
folder of the previous save is deleted only once checkpoint.pt names the new one, so a kill
leaves a checkpoint.pt whose optimizer folder exists. DCP's own reader unpickles its .metadata
file; SafeReader reads it with torch's weights-only unpickler instead, allowing DCP's metadata
classes and nothing else.

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
import shutil
from typing import Callable

import torch

from model.errors import UserError
from training.distributed import World, full_tensor

CHECKPOINT_NAME = "checkpoint.pt"
STATE_NAME = "state.json"
TMP_SUFFIX = ".tmp"
REQUIRED_KEYS = ("step", "config", "history", "lora", "optimizer", "scheduler", "scaler", "data", "rng")
# Files of a run folder whose temporary twins (NAME.tmp) a killed save can leave behind. Only
# these are removed: --out may be a folder that also holds the user's own files.
OPTIMIZER_DIR = "optimizer-step{step}"   # a distributed run's sharded optimizer state (DCP)
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


def snapshot(step: int, settings: dict, history: list, model, optimizer, scheduler, scaler, batcher,
             world: World = World()) -> dict:
    """Everything --resume needs after `step`, as tensors and plain values (weights_only loads it).
    Distributed: every rank must call it (the LoRA tensors are gathered); the optimizer entry
    names the DCP folder that Run.save writes."""
    state = {"step": step, "config": settings, "history": history,
             "lora": {n: full_tensor(p).detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "data": batcher.state_dict(), "rng": rng_state()}
    if world.distributed:
        state["optimizer"] = {"sharded": OPTIMIZER_DIR.format(step=step), "ranks": world.size}
        state["torch_rng_ranks"] = _gather_rng(world)   # dropout draws differ per rank
    return state


def restore(state: dict, model, optimizer, scheduler, scaler, batcher, out=None, module=None,
            world: World = World()) -> tuple[int, list]:
    """Puts a snapshot back; returns (step, metrics history). `module` is what the optimizer's
    parameters live in (the wrapped loss module), needed for sharded optimizer state."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                _copy_full(p, state["lora"][name])
    saved = state["optimizer"]
    if "sharded" in saved:
        load_sharded_optimizer(Path(out) / saved["sharded"], module, optimizer)
    elif world.parallel == "fsdp":   # a one-process checkpoint, now sharded over the ranks
        _load_full_optimizer(saved, module, optimizer)
    else:
        optimizer.load_state_dict(saved)
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    batcher.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    ranks = state.get("torch_rng_ranks")
    if ranks is not None and len(ranks) == world.size:   # same world: each rank's own stream
        torch.set_rng_state(ranks[world.rank].clone())
    return state["step"], state["history"]


def _copy_full(param, full: torch.Tensor):
    """param.copy_(full), for a plain tensor or this rank's shard of an FSDP DTensor."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        full = distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements,
                                 src_data_rank=None)   # every rank has the full tensor: split locally
    param.copy_(full)


def _gather_rng(world: World) -> torch.Tensor:
    """(ranks, n) uint8: every rank's torch RNG state."""
    import torch.distributed as dist
    mine = torch.get_rng_state().to(world.device)
    every = [torch.empty_like(mine) for _ in range(world.size)]
    dist.all_gather(every, mine)
    return torch.stack(every).cpu()


# ----------------------------------------------------------------------------- the run folder
class Run:
    """Saving and resuming a run, in one process or on every rank of a distributed one."""

    def __init__(self, out, world: World, module, optimizer, write_adapter: Callable[[dict], None]):
        self.out, self.world, self.module, self.optimizer = Path(out), world, module, optimizer
        self.write_adapter = write_adapter   # LoRA tensors by parameter name -> the PEFT adapter

    def save(self, state: dict) -> None:
        """One process: save(). Distributed: every rank writes its optimizer shard, then rank 0
        writes checkpoint.pt, the adapter and state.json, then drops the previous shard folder."""
        write_adapter = lambda: self.write_adapter(state["lora"])  # noqa: E731
        if not self.world.distributed:
            return save(self.out, state, write_adapter)
        folder = state["optimizer"]["sharded"]
        save_sharded_optimizer(self.out / folder, self.module, self.optimizer)
        if self.world.is_main:
            save(self.out, state, write_adapter)
            for old in self.out.glob(OPTIMIZER_DIR.format(step="*")):
                if old.name != folder:
                    shutil.rmtree(old, ignore_errors=True)
        self.world.barrier()

    def resume(self, state: dict, model, scheduler, scaler, batcher) -> tuple[int, list]:
        """restore(), then (rank 0) the adapter rewritten if a save was cut short before state.json."""
        step, history = restore(state, model, self.optimizer, scheduler, scaler, batcher, self.out,
                                self.module, self.world)
        if self.world.is_main:
            if repair_adapter(self.out, step, lambda: self.write_adapter(state["lora"])):
                print(f"rewrote the adapter in {self.out} from the checkpoint (step {step}); it was older or incomplete")
            print(f"resumed at step {step} from {self.out / CHECKPOINT_NAME}")
        self.world.barrier()
        return step, history


# ----------------------------------------------------------------------------- sharded optimizer state
def save_sharded_optimizer(folder: Path, module, optimizer) -> None:
    """Every rank writes its shard of AdamW's state into folder (DCP); keys are parameter names."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    dcp.save({"optimizer": get_optimizer_state_dict(module, optimizer)}, checkpoint_id=folder)


def load_sharded_optimizer(folder: Path, module, optimizer) -> None:
    """Fills optimizer from a DCP folder written with any number of ranks (or read in one process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    if not (folder / ".metadata").is_file():
        raise UserError(f"--resume: the optimizer state {folder} named by {folder.parent / CHECKPOINT_NAME} "
                        "is missing or incomplete; use another --out")
    template = {"optimizer": get_optimizer_state_dict(module, optimizer)}   # shapes and shards to fill
    try:
        dcp.load(template, storage_reader=SafeReader(folder))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--resume: {folder} is damaged or does not match this run "
                        f"({type(e).__name__}); use another --out") from None
    set_optimizer_state_dict(module, optimizer, template["optimizer"])


def _load_full_optimizer(saved: dict, module, optimizer) -> None:
    """A one-process optimizer state_dict (parameters by index) put into FSDP's sharded optimizer:
    the indices become parameter names, and each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    by_name = {"state": {names[i]: s for i, s in saved["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


# What DCP's .metadata may name: its own record classes, torch's dtypes, layouts and Size, and the
# path it was saved to. Nothing that runs code when built.
_DCP_METADATA = {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"}
_ALLOWED_GLOBALS = {("torch.distributed.checkpoint.metadata", n) for n in _DCP_METADATA} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
    ("torch", "Size"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _ALLOWED_GLOBALS and not dtype:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")
        return super().find_class(module, name)


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's reader, with .metadata unpickled by _MetadataUnpickler: only DCP's own metadata
        classes and plain values can come out of it; a file naming anything else is refused."""

        def read_metadata(self, *args, **kwargs):
            path = self._get_metadata_path(kwargs.get("rank"))
            try:
                with open(path, "rb") as f:
                    meta = _MetadataUnpickler(f).load()
            except pickle.UnpicklingError as e:
                raise UserError(f"{path} holds Python objects besides DCP's metadata; refusing to "
                                f"load it ({e})") from None
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return SafeReader


def SafeReader(folder):  # noqa: N802 (a class, built on first use so DCP loads only when needed)
    return _safe_reader_class()(folder)


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
