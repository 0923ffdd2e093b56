"""A checkpoint's safetensors files, and reading them one tensor at a time.

    folder --checkpoint_files--> [model.safetensors] or the shards its index names
    file   --TensorFile--> header (name -> dtype, shape, byte range) -> one tensor per read
"""

import json
import math
import os
from pathlib import Path

import torch

from model.errors import UserError


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint, single-file or sharded."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({e})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise UserError(f"{folder}: no model.safetensors or model.safetensors.index.json here")
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: shard named in model.safetensors.index.json is missing")
    return files


# A safetensors file: 8 bytes (little-endian length of the header), the header as JSON,
#   {"name": {"dtype": "BF16", "shape": [2048, 8192], "data_offsets": [begin, end]}, ...,
#    "__metadata__": {...}},
# then the tensors' raw bytes, `begin` and `end` counting from the end of the header.
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class TensorFile:
    """One tensor at a time from a safetensors file, with plain reads. (The safetensors package
    maps the whole file into memory, and every page a read touches then counts as this process's
    memory until the file is closed: quantizing a 2.5 GB file would hold all 2.5 GB at once.)"""

    def __init__(self, path: Path):
        self.path = path
        self.file = None
        try:
            self.file = open(path, "rb")
            size = os.fstat(self.file.fileno()).st_size
            header_len = int.from_bytes(self.file.read(8), "little")
            if not 2 <= header_len <= size - 8:
                raise ValueError(f"header length {header_len} does not fit a {size}-byte file")
            header = json.loads(self.file.read(header_len))
            header.pop("__metadata__", None)
            self.entries = {key: (e["dtype"], tuple(e["shape"]), *e["data_offsets"])
                            for key, e in header.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            self.close()
            raise UserError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e}); "
                            "it may be truncated or corrupt") from None
        self.data_start = 8 + header_len

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.entries[key][1]

    def dtype_name(self, key: str) -> str:
        return self.entries[key][0]

    def raw_bytes(self, key: str, limit: int | None = None) -> bytes:
        """The first `limit` bytes of a tensor as stored (all of them when limit is None)."""
        _, _, begin, end = self.entries[key]
        if not 0 <= begin <= end:
            raise UserError(f"{self.path}: tensor '{key}' has data_offsets [{begin}, {end}]; "
                            "the file is corrupt")
        n_bytes = end - begin if limit is None else min(limit, end - begin)
        self.file.seek(self.data_start + begin)
        data = self.file.read(n_bytes)
        if len(data) != n_bytes:
            raise UserError(f"{self.path}: tensor '{key}' ends past the end of the file; "
                            "the file is truncated, download or copy it again")
        return data

    def get_tensor(self, key: str) -> torch.Tensor:
        dtype_name, shape, begin, end = self.entries[key]
        if dtype_name not in SAFETENSORS_DTYPES:
            raise UserError(f"{self.path}: tensor '{key}' is stored as {dtype_name}, which this "
                            f"loader does not read ({', '.join(SAFETENSORS_DTYPES)})")
        dtype, n_bytes = SAFETENSORS_DTYPES[dtype_name], end - begin
        if n_bytes != math.prod(shape) * dtype.itemsize or n_bytes < 0:
            raise UserError(f"{self.path}: tensor '{key}' has {n_bytes} bytes, its shape "
                            f"{list(shape)} needs {math.prod(shape) * dtype.itemsize}; the file is corrupt")
        data = torch.empty(n_bytes, dtype=torch.uint8)
        buffer, filled = memoryview(data.numpy()), 0
        self.file.seek(self.data_start + begin)
        while filled < n_bytes:            # one read returns at most ~2 GB on Linux
            got = self.file.readinto(buffer[filled:])
            if not got:
                raise UserError(f"{self.path}: tensor '{key}' ends past the end of the file; "
                                "the file is truncated, download or copy it again")
            filled += got
        return data.view(dtype).view(shape)

    def close(self):
        if self.file is not None:
            self.file.close()
