"""load_tokenizer: find a model's tokenizer file (a folder, a file, or a hub repo id), read its
tokenizer_config.json, and build the right kind from model/tokenizer/core.py.

    tokenizer.json                     -> model/tokenizer/hf_json.py (converted to tiktoken ranks)
    tokenizer.model, "base64 rank"     -> Llama-3 tiktoken file, read here
    tokenizer.model, binary protobuf   -> sentencepiece
"""

import base64
import json
import re
from pathlib import Path

from model import hub
from model.errors import UserError
from model.tokenizer.core import (LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, BPETokenizer,
                             SentencePieceTokenizer, Tokenizer, TokenizerConfig)
from model.tokenizer.hf_json import load_tokenizer_json

TOKENIZER_FILES = ["tokenizer.json", "tokenizer.model", "original/tokenizer.model"]
SIDE_FILES = ["tokenizer_config.json", "chat_template.jinja"]


# ---------------------------------------------------------------- finding and reading files

def load_tokenizer(path_or_id: str | Path) -> Tokenizer:
    """A tokenizer from a file, a folder, or a Hugging Face hub repo id."""
    path = Path(path_or_id).expanduser()
    if not path.exists():
        if _looks_like_repo_id(str(path_or_id)):
            path = hub.download(str(path_or_id), TOKENIZER_FILES + SIDE_FILES,
                                instead="pass a local tokenizer file or model folder instead")
        else:
            raise UserError(f"Tokenizer path {path} does not exist; pass a tokenizer file, a "
                            "model folder, or a hub repo id such as HuggingFaceTB/SmolLM2-135M-Instruct.")
    file = _find_tokenizer_file(path) if path.is_dir() else path
    config = _read_config(file.parent)
    if file.name.endswith(".json"):
        return load_tokenizer_json(file, config)
    if _is_tiktoken_file(file):
        return _load_tiktoken_file(file, config)
    try:
        return SentencePieceTokenizer(str(file), config)
    except (RuntimeError, OSError) as err:
        raise UserError(f"{file} is neither a tiktoken file nor a sentencepiece model "
                        f"({err}); point to a tokenizer.model or tokenizer.json.") from None


def _looks_like_repo_id(text: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None and not text.startswith(".")


def _find_tokenizer_file(folder: Path) -> Path:
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"Folder {folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                    "point to the model folder that holds one.")


def _is_tiktoken_file(file: Path) -> bool:
    """tiktoken files are text lines "base64 rank"; sentencepiece models are binary protobuf."""
    with open(file, "rb") as f:
        first_line = f.readline(1024)
    return re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+\r?\n?", first_line) is not None


def _read_config(folder: Path) -> TokenizerConfig | None:
    """tokenizer_config.json and chat_template.jinja beside the file, or one level up for the
    original/ folder of meta-llama repos. None when there are neither."""
    if folder.name == "original" and not (folder / "tokenizer_config.json").is_file():
        folder = folder.parent
    file, jinja_file = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    if not file.is_file() and not jinja_file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}); restore it from the model repo.") from None

    def token_name(value):  # "<s>", or {"content": "<s>", ...} in older files
        return value.get("content") if isinstance(value, dict) else value

    template = raw.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default", next(iter(named.values()), None))
    if jinja_file.is_file():  # newer repos keep the template apart
        template = jinja_file.read_text(encoding="utf-8")
    return TokenizerConfig(
        bos_token=token_name(raw.get("bos_token")),
        eos_token=token_name(raw.get("eos_token")),
        pad_token=token_name(raw.get("pad_token")),
        add_bos=raw.get("add_bos_token"),
        chat_template=template,
    )


# ---------------------------------------------------------------- (a) Llama-3 tiktoken file

def _load_tiktoken_file(file: Path, config: TokenizerConfig | None) -> BPETokenizer:
    ranks = {}
    with open(file, "rb") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
            except (ValueError, IndexError):
                raise UserError(f"{file} line {line_number} is not 'base64 rank'; the file is "
                                "damaged, download it again.") from None
            ranks[token] = rank
    # The file holds no special tokens: Llama-3 numbers them right after the ordinary ones.
    special_tokens = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
    config = config or TokenizerConfig()
    config.bos_token = config.bos_token or "<|begin_of_text|>"
    config.eos_token = config.eos_token or "<|end_of_text|>"
    config.add_bos = True  # Meta's tokenizer always starts with <|begin_of_text|>
    return BPETokenizer(str(file), ranks, LLAMA3_PATTERN, special_tokens, config)
