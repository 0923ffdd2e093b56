"""CrisisClassifier: P(crisis) per message, from a small trained head on all-MiniLM-L6-v2.

    text -> WordPiece pieces -> windows of WINDOW pieces, OVERLAP shared     (nothing is cut)
         -> BERT, 6 layers (frozen; a LoRA update on the top layers merged in when trained so)
         -> mean over real tokens -> L2-normalise                  (sentence-transformers' vector)
         -> crisis head: logit per window -> max over the windows -> sigmoid = P(crisis)
         -> category head on the window with the highest logit -> one of RISK_CATEGORIES

The max over windows is what makes one crisis line inside 5,000 words of small talk count: its
window scores high whatever the rest says. `python -m safety.train` trains the heads the same
way (a text's logit is its highest window's), so training and use agree.

The shipped files live in safety/classifier/: head.safetensors (the head tensors, and the LoRA
tensors when the encoder was tuned) and config.json (threshold, window, encoder, dev figures).
The module imports without torch: `load_classifier()` returns None, with one warning line,
when torch, the MiniLM package or the shipped head is missing; the lexicon then checks alone.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
except ImportError:                     # the lexicon works without torch; so does this import
    torch = None

from .categories import RISK_CATEGORIES

FOLDER = Path(__file__).resolve().parent / "classifier"
HEAD_FILE = "head.safetensors"
CONFIG_FILE = "config.json"
ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_WINDOWS = 32                      # windows per encoder call when scoring many texts


@dataclass
class HeadConfig:
    """config.json beside the head: what a loaded classifier must do exactly as in training."""
    threshold: float = 0.5              # P(crisis) at or above this is a crisis (chosen on dev)
    window: int = 64                    # WordPiece pieces per window ([CLS]/[SEP] come on top)
    overlap: int = 16                   # pieces shared by neighbouring windows
    hidden: int = 0                     # 0: logistic crisis head; >0: MLP with this many units
    lora_layers: int = 0                # top encoder layers with a LoRA update (0: frozen)
    lora_r: int = 8
    lora_alpha: float = 16.0
    categories: list[str] = field(default_factory=lambda: list(RISK_CATEGORIES))
    encoder: str = ENCODER_ID
    pooling: str = "mean"
    extra: dict = field(default_factory=dict)   # dev metrics, corpus hash, variant: for reading

    @classmethod
    def from_file(cls, path: Path) -> "HeadConfig":
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {k: raw.pop(k) for k in list(raw) if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        cfg.extra.update(raw)
        return cfg

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        out.update(self.extra)
        return out


# ---------------------------------------------------------------------- the heads' maths
def crisis_logits(head: dict, emb: "torch.Tensor") -> "torch.Tensor":
    """(N, dim) unit vectors -> (N,) crisis logits. Logistic: w.e + b; MLP: one GELU layer."""
    if "crisis.up.weight" in head:
        h = F.gelu(F.linear(emb, head["crisis.up.weight"], head["crisis.up.bias"]))   # (N, hidden)
        return F.linear(h, head["crisis.out.weight"], head["crisis.out.bias"])[:, 0]
    return F.linear(emb, head["crisis.out.weight"], head["crisis.out.bias"])[:, 0]


def category_logits(head: dict, emb: "torch.Tensor") -> "torch.Tensor":
    """(N, dim) -> (N, n_categories): a softmax regression over the risk categories."""
    return F.linear(emb, head["category.weight"], head["category.bias"])


def pad(rows: list[list[int]], pad_id: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-padded ids and a 1/0 mask, both (B, T)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def mean_pool(hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """(B, T, dim) hidden states, (B, T) mask -> (B, dim) unit vectors, as sentence-transformers."""
    w = mask.unsqueeze(-1).to(hidden.dtype)                                  # (B, T, 1)
    pooled = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


def merge_lora(bert, tensors: dict, cfg: HeadConfig) -> None:
    """Fold each saved LoRA pair into its encoder weight: W += (alpha / r) * B @ A."""
    scale = cfg.lora_alpha / cfg.lora_r
    with torch.no_grad():
        for name, A in tensors.items():
            if not name.startswith("lora.") or not name.endswith(".lora_A"):
                continue
            module = name.removeprefix("lora.").removesuffix(".lora_A")     # layers.5.attn.q
            B = tensors[f"lora.{module}.lora_B"]
            bert.get_submodule(module).weight += scale * (B @ A)


# ---------------------------------------------------------------------- the classifier
class CrisisClassifier:
    """P(crisis) and the likely risk category of each text. Inference only, CPU or GPU."""

    def __init__(self, bert, tokenizer, head: dict, cfg: HeadConfig, device: str = "cpu"):
        self.device = torch.device(device)
        self.bert = bert.to(self.device).eval()
        self.tokenizer = tokenizer
        # The heads are a few thousand numbers: they run on the CPU after the encoder.
        self.head = {k: v.float().cpu() for k, v in head.items() if not k.startswith("lora.")}
        self.cfg = cfg
        self.threshold = cfg.threshold

    def window_embeddings(self, texts: list[str]) -> tuple["torch.Tensor", list[int]]:
        """Every window of every text as one unit vector: (n_windows, dim), and the text each
        window came from. Windows of similar length share an encoder batch."""
        with torch.inference_mode():
            return self._window_embeddings(texts)

    def _window_embeddings(self, texts):
        windows, owner = [], []
        for i, text in enumerate(texts):
            for w in self.tokenizer.windows(text, self.cfg.window, self.cfg.overlap):
                windows.append(w)
                owner.append(i)
        out = torch.empty(len(windows), self.bert.cfg.hidden)
        order = sorted(range(len(windows)), key=lambda j: -len(windows[j]))
        for start in range(0, len(order), BATCH_WINDOWS):
            idx = order[start:start + BATCH_WINDOWS]
            ids, mask = pad([windows[j] for j in idx], self.tokenizer.pad_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            out[idx] = mean_pool(self.bert(ids, mask), mask).float().cpu()     # (b, dim)
        return out, owner

    def assess(self, texts: list[str]) -> list[tuple[float, str | None]]:
        """(P(crisis), most likely risk category) per text, from one encoder pass.
        An empty (or whitespace-only) text is (0.0, None)."""
        with torch.inference_mode():
            return self._assess(texts)

    def _assess(self, texts):
        if isinstance(texts, str):
            raise TypeError("assess takes a list of strings; wrap a single text as [text]")
        texts = [t if isinstance(t, str) else "" for t in texts]
        live = [i for i, t in enumerate(texts) if t.strip()]
        results: list[tuple[float, str | None]] = [(0.0, None)] * len(texts)
        if not live:
            return results
        emb, owner = self.window_embeddings([texts[i] for i in live])
        logits = crisis_logits(self.head, emb)                               # (n_windows,)
        cats = category_logits(self.head, emb).argmax(dim=-1)                # (n_windows,)
        best: dict[int, int] = {}                    # text -> its highest-scoring window
        for j, i in enumerate(owner):
            if i not in best or logits[j] > logits[best[i]]:
                best[i] = j
        for i, j in best.items():
            results[live[i]] = (float(torch.sigmoid(logits[j])), self.cfg.categories[int(cats[j])])
        return results

    def scores(self, texts: list[str]) -> list[float]:
        """P(crisis) per text, batched; the highest over its windows. Empty text: 0.0."""
        return [s for s, _ in self.assess(texts)]

    def categories(self, texts: list[str]) -> list[str | None]:
        """The most likely risk category per text (None for an empty text), whatever its score:
        compare the score with `threshold` to know whether it is a crisis at all."""
        return [c for _, c in self.assess(texts)]

    def is_crisis(self, texts: list[str]) -> list[bool]:
        return [s >= self.threshold for s in self.scores(texts)]


# ---------------------------------------------------------------------- loading
_warned = False
_loaded: dict[str, "CrisisClassifier"] = {}


def _warn(why: str, quiet: bool) -> None:
    global _warned
    if not quiet and not _warned:
        _warned = True
        print(f"warning: the crisis classifier is off ({why}); the lexicon alone is checking",
              file=sys.stderr)


def load_classifier(quiet: bool = False, folder: str | Path | None = None) -> CrisisClassifier | None:
    """The shipped classifier (loaded once per process and folder), or None with ONE warning
    line on stderr per process (unless quiet) when torch, the MiniLM package or the head is
    missing or unreadable. `folder` replaces safety/classifier/ (tests, fresh training runs)."""
    folder = Path(folder) if folder is not None else FOLDER
    key = str(folder.resolve())
    if key in _loaded:
        return _loaded[key]
    if torch is None:
        _warn("torch is not installed", quiet)
        return None
    from model.errors import UserError
    from model.minilm import PIP_NAME, package_zip, load_sentence_encoder
    if package_zip() is None:          # checked first: no slow hub attempt on every start
        _warn(f"the package {PIP_NAME} is not installed", quiet)
        return None
    head_path, cfg_path = folder / HEAD_FILE, folder / CONFIG_FILE
    if not head_path.is_file() or not cfg_path.is_file():
        _warn(f"{head_path if not head_path.is_file() else cfg_path} is missing; "
              "run `python -m safety.train`", quiet)
        return None
    try:
        from safetensors.torch import load_file
        cfg = HeadConfig.from_file(cfg_path)
        tensors = load_file(str(head_path))
    except Exception as e:              # truncated file, bad JSON, wrong keys
        _warn(f"{folder} is unreadable: {type(e).__name__}: {e}; run `python -m safety.train`",
              quiet)
        return None
    try:
        encoder = load_sentence_encoder()
    except UserError as e:
        _warn(str(e), quiet)
        return None
    if cfg.lora_layers:
        merge_lora(encoder.bert, tensors, cfg)
    classifier = CrisisClassifier(encoder.bert, encoder.tokenizer, tensors, cfg)
    _loaded[key] = classifier
    return classifier
