"""Writing a merged, full-precision HF checkpoint that transformers loads like any other."""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora.inject import lora_modules, merge_and_unload

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")
SHARD_BYTES = 4 * 1024**3


def save_merged(model, out_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None,
                dtype: torch.dtype = torch.bfloat16):
    """Merges the adapters into (a copy of the references to) the base weights and writes
    config.json + safetensors (+ the tokenizer files from `source_dir`). The model is merged in
    place and keeps no LoRA afterwards; 4-bit bases are dequantized first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lora_modules(model):
        merge_and_unload(model)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "inv_freq" or not torch.is_floating_point(tensor):
            continue
        hf_name = name if name.startswith("lm_head") else f"model.{name}"
        state[hf_name] = tensor.detach().to("cpu", dtype).contiguous()

    shards, current, size = [], {}, 0
    for key, t in state.items():
        if current and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += t.numel() * t.element_size()
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    dtype_name = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(model.config.to_hf(dtype_name), indent=2))
    if source_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(source_dir) / name).is_file():
                shutil.copy(Path(source_dir) / name, out / name)
    return out
