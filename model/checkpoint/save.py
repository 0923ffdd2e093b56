"""Writing a model as a Hugging Face checkpoint folder, the one load_model and transformers read.

    folder/config.json                        model.config.to_hf(...), plus quantization_config
                                              when the linears are 4-bit
    folder/model.safetensors                  every tensor under its HF name; past SHARD_BYTES
      or model-00001-of-0000N.safetensors ... the tensors are split into shards, listed in
         + model.safetensors.index.json       model.safetensors.index.json
    folder/tokenizer.json, ...                copied from source_dir

Names. Ours are HF's without the leading "model.": "layers.0.mlp.up_proj.weight" is saved as
"model.layers.0.mlp.up_proj.weight". lm_head sits outside "model." in HF; a tied model has none
and writes none (the embedding serves as the head).

4-bit layers. A Linear4bit is written the way bitsandbytes saves one: X.weight holds the packed
bytes (uint8), next to X.weight.absmax, .quant_map, .nested_absmax, .nested_quant_map and
.quant_state.bitsandbytes__nf4 (model/quant/nf4.py). config.json then carries the
quantization_config that transformers writes for bitsandbytes 4-bit, so transformers +
bitsandbytes load the folder as one of their own, and load_model reads the bytes back as they are.

Everything is first written into a temporary folder beside the target, which then takes the
target's place: an interrupted save leaves the previous checkpoint (or nothing), never half of one.
"""

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from model.errors import UserError
from model.quant.linear4bit import Linear4bit
from model.llama import Llama
from model.quant.nf4 import QUANT_TYPE, quant_state_to_tensors

SHARD_BYTES = 4 * 1024**3        # the most tensor bytes one safetensors file gets
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")


def save_checkpoint(model: Llama, folder: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                    source_dir: str | os.PathLike | None = None) -> Path:
    """Writes `model` to `folder` (replacing a checkpoint already there). Full-precision tensors
    are stored in `dtype`; 4-bit linears keep their bytes. Returns the folder."""
    folder = Path(folder).resolve()
    _check_target(folder)
    groups = checkpoint_groups(model)
    four_bit = [m for m in model.modules() if isinstance(m, Linear4bit)]

    tmp = folder.with_name(f".{folder.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)            # left over from an interrupted save
    tmp.mkdir(parents=True)
    try:
        _write_tensors(groups, dtype, tmp)
        config = model.config.to_hf(str(dtype).removeprefix("torch."))
        if four_bit:
            config["quantization_config"] = quantization_config(four_bit[0].compute_dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if source_dir is not None:
            for name in TOKENIZER_FILES:
                if (Path(source_dir) / name).is_file():
                    shutil.copy(Path(source_dir) / name, tmp / name)
        _swap_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def quantization_config(compute_dtype: torch.dtype) -> dict:
    """config.json's entry for bitsandbytes NF4 with double quantization, as transformers writes
    it. llm_int8_skip_modules null: transformers then keeps lm_head in full precision, as we do."""
    return {
        "quant_method": "bitsandbytes",
        "_load_in_4bit": True,
        "_load_in_8bit": False,
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": QUANT_TYPE,
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": str(compute_dtype).removeprefix("torch."),
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0,
    }


# ----------------------------------------------------------------------------- what gets written
def checkpoint_groups(model: Llama) -> list[tuple[dict[str, torch.Tensor], bool]]:
    """The model's tensors under their HF names, in groups that must share a file: a 4-bit
    weight with its statistics (stored as they are: True), or one full-precision tensor (cast to
    the checkpoint's dtype when written: False)."""
    _check_plain_llama(model)
    groups = []
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            packed = quant_state_to_tensors(_hf_name(f"{name}.weight"), module.weight,
                                            module.quant_state)
            groups.append(({key: t.detach().to("cpu") for key, t in packed.items()}, True))
            if module.bias is not None:
                groups.append(({_hf_name(f"{name}.bias"): module.bias.detach()}, False))
            continue
        for attr, param in module.named_parameters(recurse=False):
            groups.append(({_hf_name(f"{name}.{attr}"): param.detach()}, False))
    return groups


def _hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else f"model.{name}"


def _check_plain_llama(model: Llama):
    """Only what a plain Llama of this config holds can be written under HF names: no LoRA
    (merge it, or save it as an adapter), no half-quantized model, nothing left on "meta"."""
    with torch.device("meta"):
        expected = {name for name, _ in Llama(model.config).named_parameters()}
    ours = set()
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            ours.add(f"{name}.weight")
        ours.update(f"{name}.{attr}" for attr, _ in module.named_parameters(recurse=False))
    extra, missing = sorted(ours - expected), sorted(expected - ours)
    if extra or missing:
        example = extra[0] if extra else missing[0]
        raise UserError(f"the model's tensors are not those of a plain Llama ('{example}' is "
                        f"{'unexpected' if extra else 'missing'}); merge LoRA adapters first "
                        "(lora.merge_and_unload) or save them with lora.save_adapter")
    linears = [(name, module) for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, Linear4bit)) and name != "lm_head"]
    dense = [name for name, module in linears if isinstance(module, nn.Linear)]
    if dense and len(dense) < len(linears):
        raise UserError(f"the model mixes 4-bit and full-precision linears (e.g. '{dense[0]}'); "
                        "quantize all of them (load_model(..., quantize='nf4')) or none")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise UserError(f"'{name}' was never loaded (it is on the meta device); load the "
                            "model with load_model before saving it")


# ----------------------------------------------------------------------------- writing
def _write_tensors(groups: list[tuple[dict[str, torch.Tensor], bool]], dtype: torch.dtype,
                   folder: Path):
    """One model.safetensors, or shards of at most SHARD_BYTES (a group never straddles two)
    plus the index that maps every tensor to its shard. Casts one shard at a time, so memory
    holds the model plus one shard's copies at most."""
    def stored_bytes(t: torch.Tensor, as_is: bool) -> int:
        return t.numel() * (t.element_size() if as_is else dtype.itemsize)

    shards, size = [[]], 0
    for tensors, as_is in groups:
        group_bytes = sum(stored_bytes(t, as_is) for t in tensors.values())
        if shards[-1] and size + group_bytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((tensors, as_is))
        size += group_bytes

    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = "model.safetensors" if len(shards) == 1 else \
            f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        out = {key: (t if as_is else t.to("cpu", dtype)).contiguous()
               for tensors, as_is in shard for key, t in tensors.items()}
        save_file(out, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in out})
        total += sum(t.numel() * t.element_size() for t in out.values())
        del out                       # this shard's cast copies
    if len(shards) > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _check_target(folder: Path):
    """Refuses to replace anything but a model folder (one with a config.json) or an empty one."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is a file; choose a folder to save the model in")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "config.json").is_file():
        raise UserError(f"{folder}: exists and holds files but no config.json, so it is not a "
                        "model folder this save may replace; choose a new or empty folder")


def _swap_into_place(tmp: Path, folder: Path):
    """The finished temporary folder takes `folder`'s place; a previous checkpoint there is
    moved aside first and deleted last."""
    if not folder.exists():
        tmp.rename(folder)
        return
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():
        shutil.rmtree(old)
    folder.rename(old)
    try:
        tmp.rename(folder)
    except OSError:
        old.rename(folder)            # put the previous checkpoint back
        raise
    shutil.rmtree(old)
