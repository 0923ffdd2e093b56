"""A run's settings checked before anything loads or any folder is made: a bad value costs a
one-line error naming the flag, not a model load, a traceback or an empty run folder."""

import dataclasses
import importlib.util
import math
from pathlib import Path

import torch

from lora.inject import DEFAULT_TARGETS, SHORT_NAMES
from model.errors import UserError
from model.checkpoint.load import parse_dtype
from training.checkpoint import CHECKPOINT_NAME

CHOICES = {
    "arch": ("llama", "rnn", "lstm"),
    "template": ("chat", "alpaca"),
    "optim": ("adamw", "adamw8bit"),
    "lr_schedule": ("linear", "cosine", "constant"),
    "quantize": (None, "nf4"),          # parse_args has turned "none" into None
    "dtype": ("float32", "bfloat16", "float16", "auto", "fp32", "bf16", "fp16"),
    "parallel": ("none", "ddp", "fsdp"),
}

# (lowest, highest, lowest allowed itself, highest allowed itself); None: no bound.
RANGES = {
    "max_len": (2, None, True, None), "lora_r": (1, None, True, None),
    "lora_alpha": (0, None, False, None), "lora_dropout": (0, 1, True, False),
    "max_steps": (1, None, True, None), "batch_size": (1, None, True, None),
    "grad_accum": (1, None, True, None), "lr": (0, None, False, None),
    "warmup_steps": (0, None, True, None), "weight_decay": (0, None, True, None),
    "grad_clip": (0, None, True, None), "eval_fraction": (0, 1, False, False),
    "eval_every": (0, None, True, None), "save_every": (0, None, True, None),
    "log_every": (1, None, True, None), "char_steps": (1, None, True, None),
    "char_hidden": (1, None, True, None), "dist_timeout": (0, None, False, None),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_config(cfg, resume: bool) -> None:
    """Raises UserError for the first setting a run cannot use (cfg: train.TrainConfig)."""
    for f in dataclasses.fields(cfg):  # presets are JSON: "16" where 16 belongs reaches here
        value = getattr(cfg, f.name)
        if f.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))
                                       or (f.type is int and not isinstance(value, int))):
            raise UserError(f"{_flag(f.name)} {value!r}: must be {'an integer' if f.type is int else 'a number'}")
        if f.type is bool and not isinstance(value, bool):
            raise UserError(f"{_flag(f.name)} {value!r}: must be true or false")
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            shown = ", ".join("none" if c is None else c for c in choices if c not in ("fp32", "bf16", "fp16"))
            raise UserError(f"{_flag(name)} {getattr(cfg, name)}: choose one of {shown}")
    for name, bounds in RANGES.items():
        check_range(_flag(name), getattr(cfg, name), *bounds)
    targets = [t.strip() for t in str(cfg.targets).split(",") if t.strip()]
    if not targets:
        raise UserError("--targets: name at least one module (e.g. q_proj,v_proj)")
    for t in targets:
        if t not in DEFAULT_TARGETS and t not in SHORT_NAMES:
            raise UserError(f"--targets {t}: not a linear of the model; choose from "
                            f"{','.join(DEFAULT_TARGETS)} (or {','.join(SHORT_NAMES)})")
    check_device(cfg.device)
    if cfg.cpu_offload and cfg.parallel != "fsdp":
        raise UserError("--cpu-offload: only with --parallel fsdp (it offloads FSDP's shards)")
    if cfg.parallel == "fsdp" and cfg.optim == "adamw8bit":
        raise UserError("--optim adamw8bit: not with --parallel fsdp (bitsandbytes' optimizer cannot step "
                        "sharded parameters; FSDP already splits AdamW's state across ranks); use --optim adamw")
    if cfg.parallel != "none" and cfg.arch != "llama":
        raise UserError(f"--parallel {cfg.parallel}: the {cfg.arch} baseline trains in one process; drop it")
    if cfg.optim == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--optim adamw8bit needs bitsandbytes (pip install bitsandbytes), or use --optim adamw")

    out = Path(cfg.out)
    if not str(cfg.out).strip():
        raise UserError("--out: name a run folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: this is a file; name a folder")
    if cfg.arch != "llama":
        if resume:
            raise UserError(f"--resume: the {cfg.arch} baseline trains in one go and cannot resume; "
                            "drop --resume")
        return
    checkpoint = out / CHECKPOINT_NAME
    if resume and not checkpoint.is_file():
        raise UserError(f"--resume: no checkpoint at {checkpoint}")
    if not resume and checkpoint.is_file():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


# Shared with generate.py and evaluate.py: a flag's value checked before anything slow loads.
def check_range(flag: str, value, low, high=None, low_ok=True, high_ok=None) -> None:
    """UserError naming the flag unless low <= value (< if not low_ok) and, with a high bound,
    value <= high (< if not high_ok). NaN and infinities never pass."""
    fine = math.isfinite(value)
    fine = fine and (low is None or value > low or (low_ok and value == low))
    fine = fine and (high is None or value < high or (high_ok and value == high))
    if not fine:
        raise UserError(f"{flag} {value}: must be {_range_text(low, high, low_ok, high_ok)}")


def check_dtype(dtype: str, flag: str = "--dtype") -> None:
    try:
        parse_dtype(dtype)
    except UserError:
        raise UserError(f"{flag} {dtype}: choose float32, bfloat16 or float16") from None


def check_device(device: str, flag: str = "--device") -> str:
    """The device a run will use ("auto": cuda when PyTorch sees a GPU, else cpu), or a
    UserError naming the flag."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UserError(f"{flag} {device}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"{flag} {device}: PyTorch sees no CUDA GPU here; use {flag} cpu or auto")
    if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"{flag} {device}: there are only {torch.cuda.device_count()} CUDA GPUs (cuda:0 ...)")
    return device


def _range_text(low, high, low_ok, high_ok) -> str:
    if high is None:
        return f"{'at least' if low_ok else 'more than'} {low}"
    return f"in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
