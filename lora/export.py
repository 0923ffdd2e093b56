"""Writing a merged, full-precision HF checkpoint that transformers loads like any other."""

import os
from pathlib import Path

import torch

from lora.inject import lora_modules, merge_and_unload
from model.quant.linear4bit import replace_4bit_with_linears
from model.checkpoint.save import save_checkpoint


def save_merged(model, out_dir: str | os.PathLike, source_dir: str | os.PathLike | None = None,
                dtype: torch.dtype = torch.bfloat16) -> Path:
    """Merges the adapters into the base weights and writes config.json + safetensors (+ the
    tokenizer files from `source_dir`) with model/checkpoint/save.py. The model is merged in place and
    keeps no LoRA afterwards. A 4-bit base ends up dequantized: a merged weight is no longer the
    4-bit one, and linears that carried no adapter are dequantized too, so the whole folder is
    full precision."""
    if lora_modules(model):
        merge_and_unload(model)
    replace_4bit_with_linears(model, dtype)
    return save_checkpoint(model, out_dir, dtype=dtype, source_dir=source_dir)
