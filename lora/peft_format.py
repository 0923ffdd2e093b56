"""Adapters on disk in PEFT's format, so they move between this project and HF peft.

    adapter_config.json          {"peft_type": "LORA", "r": 16, "lora_alpha": 16, ...}
    adapter_model.safetensors    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight  (r, in)
                                 base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight  (out, r)

Our module names are HF's without the leading "model." (see model/llama.py), so the mapping is
one prefix: "layers.0..." <-> "base_model.model.model.layers.0...".

Beside them, base_model.json records the base the adapter was trained on (model/checkpoint/identity.py):
peft never reads it, and loading compares it with the base actually loaded, warning once on
stderr when they differ. Adapters without it (older runs, adapters made with peft) load without
a word: there is nothing to compare, and a note on every hub adapter would teach people to skip
warnings. (base_model_name_or_path in adapter_config.json is only peft's hint where to fetch the
base from, not a check: the embedded default has no hub id of its own.)
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lora.inject import LoRAConfig, inject, lora_modules, merge_and_unload
from model.errors import UserError
from model.checkpoint.identity import FINGERPRINT_VERSION, base_identity

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BASE_RECORD_NAME = "base_model.json"


def _peft_key(module_name: str, which: str) -> str:
    hf_name = module_name if module_name == "lm_head" else f"model.{module_name}"
    return f"{PEFT_PREFIX}{hf_name}.{which}.weight"


def save_adapter(model, folder: str | os.PathLike, base_model: str | None = None,
                 identity: dict | None = None, weights: dict | None = None):
    """Writes adapter_config.json + adapter_model.safetensors (atomically, file by file), and
    base_model.json when given the base's identity (model.checkpoint.identity.base_identity).
    `weights` (LoRA tensors by parameter name, e.g. gathered from FSDP's shards) replaces the
    model's own tensors."""
    cfg: LoRAConfig = model.lora_config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, m in lora_modules(model).items():
        for part in ("lora_A", "lora_B"):
            t = weights[f"{name}.{part}"] if weights is not None else getattr(m, part)
            tensors[_peft_key(name, part)] = t.detach().float().cpu().contiguous()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "use_rslora": cfg.use_rslora, "target_modules": sorted(cfg.targets),
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "use_dora": False,
        "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    tmp = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS_NAME)
    if identity is not None:
        _write_json(folder / BASE_RECORD_NAME, identity)
    _write_json(folder / CONFIG_NAME, config)


def _write_json(path: Path, obj: dict):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)                   # a rename: readers see the old file or the new one


def check_base(model, folder: str | os.PathLike) -> bool:
    """Warns on stderr (one line) when the adapter's recorded base is not the model's; returns
    whether it warned. Silent when either side is unknown: no base_model.json, or a model not
    built by load_model (no source_dir)."""
    path = Path(folder) / BASE_RECORD_NAME
    source_dir = getattr(model, "source_dir", None)
    if not path.is_file() or source_dir is None:
        return False
    try:
        recorded = json.loads(path.read_text())
        recorded_name, recorded_print = str(recorded["name"]), recorded["fingerprint"]
        comparable = recorded.get("fingerprint_version") == FINGERPRINT_VERSION
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"warning: {path}: unreadable ({type(e).__name__}: {e}); the adapter's base model "
              "cannot be checked", file=sys.stderr)
        return True
    if not comparable:      # written by another version of the fingerprint: nothing to compare
        return False
    actual = base_identity(source_dir)
    if actual["fingerprint"] == recorded_print:
        return False
    trained_on, loaded_onto = recorded_name, actual["name"]
    if trained_on == loaded_onto:   # same name, other weights: the fingerprints tell them apart
        trained_on += f" (fingerprint {recorded_print[:12]})"
        loaded_onto += f" (fingerprint {actual['fingerprint'][:12]})"
    print(f"warning: adapter {folder} was trained on {trained_on} but is being loaded onto "
          f"{loaded_onto}; its answers may be wrong", file=sys.stderr)
    return True


def read_adapter_config(folder: str | os.PathLike) -> LoRAConfig:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise UserError(f"{folder}: no such adapter folder")
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG_NAME} here; is this a LoRA adapter or run folder?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if raw.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: peft_type '{raw.get('peft_type')}' is not supported; only LORA is")
    for key, ok in (("use_dora", False), ("bias", "none")):
        if raw.get(key, ok) != ok:
            raise UserError(f"{path}: '{key}': {raw[key]!r} is not supported")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if raw.get(key):
            raise UserError(f"{path}: '{key}' is not supported; adapters with one r/alpha for "
                            "every target are")
    targets = raw.get("target_modules") or []
    if isinstance(targets, str):
        raise UserError(f"{path}: target_modules as a regex ('{targets}') is not supported; list the names")
    try:
        return LoRAConfig(r=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                          dropout=float(raw.get("lora_dropout", 0.0)),
                          use_rslora=bool(raw.get("use_rslora", False)),
                          targets=tuple(t.rsplit(".", 1)[-1] for t in targets))
    except KeyError as e:
        raise UserError(f"{path}: required key {e} is missing") from None


def load_adapter(model, folder: str | os.PathLike, merge: bool = False):
    """Injects LoRA as the adapter's config says and fills it with the adapter's weights.
    A wrong base (other shapes or layers) or a wrong r is refused with the tensor's name; a base
    of the same shapes other than the one recorded in base_model.json gets a warning. merge=True
    then folds the adapter into the base weights and leaves plain linears (for int4/int8)."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {WEIGHTS_NAME} here")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot read adapter weights ({e})") from None
    inject(model, cfg)
    expected = {}
    for name, m in lora_modules(model).items():
        expected[_peft_key(name, "lora_A")] = m.lora_A
        expected[_peft_key(name, "lora_B")] = m.lora_B
    # PEFT sometimes stores keys with the adapter name in them ("lora_A.default.weight").
    tensors = {k.replace(".default.weight", ".weight"): v for k, v in tensors.items()}
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise UserError(f"{path}: tensor '{unknown[0]}' has no place in this model; the adapter "
                        "was trained on a different base model")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(f"{path}: tensor '{missing[0]}' is missing; the adapter does not match "
                        "this base model")
    with torch.no_grad():
        for key, param in expected.items():
            got = tensors[key]
            if got.shape != param.shape:
                hint = "r in adapter_config.json does not match the weights" \
                    if got.shape[0 if "lora_A" in key else 1] != cfg.r else "a different base model"
                raise UserError(f"{path}: tensor '{key}' has shape {tuple(got.shape)}, this model "
                                f"needs {tuple(param.shape)} ({hint})")
            param.copy_(got.to(param.dtype))
    model.requires_grad_(False)
    check_base(model, folder)   # after the shape checks: a refused adapter needs no warning too
    if merge:
        merge_and_unload(model)
    return cfg
