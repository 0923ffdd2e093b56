"""Character-level RNN and LSTM baselines: the smallest models that can learn to answer at all.

Each data row becomes one string, and the model learns to predict its next character:

    "I can't sleep and I feel on edge." + SEP + "That sounds exhausting. ..." + END

    SEP (U+001E, ASCII "record separator") ends the patient's message,
    END (U+0003, ASCII "end of text") ends the response.

Both are control characters that ordinary text never contains (row_text removes any that do
appear), so the model can learn them as plain symbols. To answer, the model is primed with
message + SEP and samples characters until it writes END (see sample_answer).

Quality is measured in bits per character on held-out rows (lower is better), next to an
add-one-smoothed unigram model (how often each character occurs, nothing more): a model that
does not beat that baseline has learned nothing about order.

    ids (B, T) -> Embedding (B, T, E) -> RNN(tanh) or LSTM (B, T, H) -> Linear -> (B, T, V)

The training loop is with train.py's, in training/char.py.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.errors import UserError

SEP = "\x1e"                 # between the patient's message and the response
END = "\x03"                 # after the response; sampling stops here
UNK = "\x00"                 # stands for any character the training text did not contain
CHECKPOINT_NAME = "char_model.pt"
METRICS_NAME = "metrics.jsonl"
_FORMAT = "char-model-v1"    # written into checkpoints so another .pt is refused by name


def _clean(text: str) -> str:
    return text.replace(SEP, "").replace(END, "").replace(UNK, "").strip()


def row_text(input: str, output: str) -> str:
    """One training row as the model sees it: message + SEP + response + END."""
    return _clean(input) + SEP + _clean(output) + END


def prompt_text(message: str) -> str:
    """What the model is primed with to answer `message`: message + SEP."""
    return _clean(message) + SEP


# ---------------------------------------------------------------------- vocabulary
class CharVocab:
    """Characters <-> ids. Id 0 is UNK, so any unseen character still has an id."""

    def __init__(self, chars: list[str]):
        if not chars or chars[0] != UNK or len(set(chars)) != len(chars):
            raise UserError("a character vocabulary must start with the unknown mark and "
                            "list each character once; rebuild it from the training text")
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, text: str) -> "CharVocab":
        """Every character of `text`, plus SEP and END, sorted, after UNK."""
        return cls([UNK] + sorted((set(text) | {SEP, END}) - {UNK}))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"chars": self.chars}), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharVocab":
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a readable character vocabulary ({e}); "
                            "rebuild it from the training text") from None


# ---------------------------------------------------------------------- model
@dataclass
class CharConfig:
    """Sizes and training settings. The defaults train in under a minute (RNN) or about a
    minute and a half (LSTM) on 2 idle CPU cores; on 300 rows of English prose (~180k
    characters) they reached 1.98 (RNN) and 1.87 (LSTM) bits/char on 30 held-out rows,
    against 4.90 for the unigram baseline."""
    arch: str = "lstm"           # "rnn" (tanh Elman RNN) or "lstm"
    embed_dim: int = 48
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.1         # on the embeddings and the recurrent outputs
    seq_len: int = 96            # characters per training window (truncated BPTT length)
    batch_size: int = 32
    lr: float = 5e-3             # AdamW peak; cosine decay to a tenth of it
    steps: int = 900
    seed: int = 0
    eval_every: int = 100

    def __post_init__(self):
        if self.arch not in ("rnn", "lstm"):
            raise UserError(f"arch {self.arch!r} is unknown; use 'rnn' or 'lstm'")
        for name in ("embed_dim", "hidden", "layers", "seq_len", "batch_size", "steps",
                     "eval_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout is {self.dropout}; use a value in [0, 1)")


class CharModel(nn.Module):
    def __init__(self, vocab_size: int, config: CharConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(vocab_size, config.embed_dim)
        recurrent = nn.LSTM if config.arch == "lstm" else nn.RNN    # nn.RNN's default is tanh
        self.rnn = recurrent(config.embed_dim, config.hidden, num_layers=config.layers,
                             dropout=config.dropout if config.layers > 1 else 0.0,
                             batch_first=True)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        """ids (B, T) -> logits (B, T, V) and the recurrent state to continue from."""
        x = self.drop(self.embed(ids))                  # (B, T, E)
        out, state = self.rnn(x, state)                 # (B, T, H)
        return self.head(self.drop(out)), state         # (B, T, V)


# ---------------------------------------------------------------------- bits per character
@torch.no_grad()
def bits_per_char(model: CharModel, vocab: CharVocab, text: str, chunk: int = 1024) -> float:
    """Mean -log2 p(char | all previous chars) over every character of `text`.

    The text is read as if it followed an END (the end of a previous row), so its first
    character is predicted too and the count matches unigram_bits_per_char. The recurrent
    state is carried across chunks, so the result does not depend on `chunk`.
    """
    if not text:
        raise UserError("the evaluation text is empty; give at least one held-out row")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor(vocab.encode(END + text), device=device)
    total_nats, state = 0.0, None
    for start in range(0, len(ids) - 1, chunk):
        x = ids[start:start + chunk].unsqueeze(0)               # (1, t)
        y = ids[start + 1:start + chunk + 1].unsqueeze(0)       # (1, t) the next characters
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total_nats += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    model.train(was_training)
    return total_nats / len(text) / math.log(2)


def unigram_bits_per_char(train_text: str, eval_text: str) -> float:
    """Bits per character of an add-one-smoothed unigram model, the floor to beat.

        p(c) = (count_train(c) + 1) / (len(train_text) + K)

    over K = the training characters plus one unknown bucket for everything else.
    """
    if not eval_text:
        raise UserError("the evaluation text is empty; give at least one held-out row")
    counts: dict[str, int] = {}
    for c in train_text:
        counts[c] = counts.get(c, 0) + 1
    K = len(counts) + 1
    denom = len(train_text) + K
    bits = 0.0
    for c in eval_text:
        bits -= math.log2((counts.get(c, 0) + 1) / denom)
    return bits / len(eval_text)


# ---------------------------------------------------------------------- saving and loading
def save_char_model(model: CharModel, vocab: CharVocab, out_dir: str | Path) -> Path:
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": _FORMAT, "config": asdict(model.config), "vocab": vocab.chars,
                "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the old file (or none), never half a model
    return path


def is_char_run(run_dir: str | Path) -> bool:
    """True when run_dir holds a character-model checkpoint (rather than a LoRA adapter)."""
    return (Path(run_dir) / CHECKPOINT_NAME).is_file()


def load_char_model(run_dir: str | Path) -> tuple[CharModel, CharVocab]:
    """The model (in eval mode, its CharConfig at .config) and vocabulary saved in run_dir."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"{path}: no character-model checkpoint here; train one with the "
                        "rnn or lstm baseline first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: cannot read the checkpoint ({type(e).__name__}); it is "
                        "damaged, train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise UserError(f"{path}: not a character-model checkpoint of this project")
    known = {f.name for f in fields(CharConfig)}
    unknown = sorted(set(ckpt["config"]) - known)
    if unknown:
        raise UserError(f"{path}: config key {unknown[0]!r} is unknown to this version; "
                        "train again with this code")
    vocab = CharVocab(ckpt["vocab"])
    model = CharModel(len(vocab), CharConfig(**ckpt["config"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{path}: the weights do not fit the saved config "
                        f"({str(e).splitlines()[0]}); train again") from None
    return model.eval(), vocab


# ---------------------------------------------------------------------- sampling
def temperature_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature): below 1 sharpens, above 1 flattens.
    Temperature 0 means greedy: all probability on the largest logit."""
    if temperature < 0:
        raise UserError(f"temperature {temperature} is negative; use 0 (greedy) or more")
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return F.softmax(logits / temperature, dim=-1)


@torch.no_grad()
def sample_answer(model: CharModel, vocab: CharVocab, message: str, max_chars: int = 400,
                  temperature: float = 0.8, seed: int = 0) -> str:
    """The model's response to `message`, sampled one character at a time.

    Primed with message + SEP; stops at END (not included) or after max_chars characters,
    so an answer shorter than max_chars is exactly one that ended on its own. The same seed
    gives the same answer. It runs on whichever device the model is on.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    end_id = vocab.index[END]
    # Never write the unknown mark or a second separator inside an answer.
    banned = [0, vocab.index[SEP]]
    ids = torch.tensor([vocab.encode(prompt_text(message))], device=device)   # (1, t)
    logits, state = model(ids)
    last = logits[0, -1].float().cpu()                                         # (V,)
    out = []
    for _ in range(max_chars):
        last[banned] = float("-inf")
        probs = temperature_probs(last, temperature)
        next_id = int(torch.multinomial(probs, 1, generator=generator))
        if next_id == end_id:
            break
        out.append(vocab.chars[next_id])
        logits, state = model(torch.tensor([[next_id]], device=device), state)
        last = logits[0, -1].float().cpu()
    model.train(was_training)
    return "".join(out)
