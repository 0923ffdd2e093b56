"""A BERT encoder in plain PyTorch, sized by a Hugging Face config.json, loaded from its weights.

    input_ids (B, T)
       |
    word + position + token-type embeddings -> LayerNorm            "embeddings"
       |
    N x  [ x = LayerNorm(x + SelfAttention(x))                       post-LN: the norm comes
           x = LayerNorm(x + Linear(GELU(Linear(x)))) ]              after each residual add
       |
    hidden states (B, T, hidden)

Padding tokens are masked out as keys in attention, so the hidden state of a real token does
not depend on how much padding its row received. Dropout is left out: the encoder runs inference
(evaluation embeddings, the safety classifier), and the classifier's training keeps it frozen
or tunes a top layer briefly, where dropout would only add noise to a small head's inputs.

Weights load by their Hugging Face names ("embeddings.word_embeddings.weight",
"encoder.layer.0.attention.self.query.weight", ...; a leading "bert." is dropped), renamed in
one table below to the shorter names used here. The pooler ("pooler.dense.*") is not used.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.errors import UserError


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384                  # hidden_size
    n_layers: int = 6                  # num_hidden_layers
    n_heads: int = 12                  # num_attention_heads
    intermediate: int = 1536           # intermediate_size of the GELU MLP
    max_positions: int = 512           # max_position_embeddings
    type_vocab_size: int = 2
    norm_eps: float = 1e-12            # layer_norm_eps

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no config.json here; a BERT model folder needs one") from None
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read this config ({e}); replace it with the "
                            "model's original config.json") from None
        # Refuse what would change the maths rather than compute something else quietly.
        if raw.get("hidden_act", "gelu") != "gelu":
            raise UserError(f"{path}: hidden_act is {raw['hidden_act']!r}; this encoder "
                            "implements only 'gelu'")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise UserError(f"{path}: position_embedding_type is "
                            f"{raw['position_embedding_type']!r}; only 'absolute' is implemented")
        try:
            cfg = cls(vocab_size=int(raw["vocab_size"]), hidden=int(raw["hidden_size"]),
                      n_layers=int(raw["num_hidden_layers"]),
                      n_heads=int(raw["num_attention_heads"]),
                      intermediate=int(raw["intermediate_size"]),
                      max_positions=int(raw.get("max_position_embeddings", 512)),
                      type_vocab_size=int(raw.get("type_vocab_size", 2)),
                      norm_eps=float(raw.get("layer_norm_eps", 1e-12)))
        except KeyError as e:
            raise UserError(f"{path}: key {e.args[0]!r} is missing; a BERT config.json "
                            "needs it") from None
        if cfg.hidden % cfg.n_heads != 0:
            raise UserError(f"{path}: hidden_size {cfg.hidden} is not a multiple of "
                            f"num_attention_heads {cfg.n_heads}")
        return cfg


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)               # (T,)
        # Every token is segment 0: single sentences, never sentence pairs.
        token_types = torch.zeros_like(input_ids)                          # (B, T)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_types)
        return self.norm(x)                                                # (B, T, hidden)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.hidden // cfg.n_heads
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.k = nn.Linear(cfg.hidden, cfg.hidden)
        self.v = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape

        def heads(t):                                   # (B, T, C) -> (B, n_heads, T, head_dim)
            return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        # key_mask (B, 1, 1, T): True where the key is a real token. Broadcast over heads and
        # queries; padded queries still attend to the real keys, their outputs are unused.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, n_heads, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)                             # (B, T, C)
        return self.out(y)


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden, cfg.intermediate)
        self.down = nn.Linear(cfg.intermediate, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))            # exact (erf) GELU, as BERT uses


class Layer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, key_mask))  # post-LN: normalise after the add
        x = self.mlp_norm(x + self.mlp(x))
        return x


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T), attention_mask (B, T) of 1 for tokens and 0 for padding
        -> last hidden states (B, T, hidden)."""
        if input_ids.shape[1] > self.cfg.max_positions:
            raise UserError(f"a row of {input_ids.shape[1]} tokens is longer than the model's "
                            f"{self.cfg.max_positions} positions; truncate the text first")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        key_mask = attention_mask.bool()[:, None, None, :]                 # (B, 1, 1, T)
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    # ------------------------------------------------------------------ weights
    @classmethod
    def from_folder(cls, folder: str | Path) -> "BertModel":
        """Build from folder/config.json and load model.safetensors or pytorch_model.bin."""
        folder = Path(folder)
        model = cls(BertConfig.from_json(folder / "config.json"))
        model.load_hf_state_dict(read_weights(folder), source=str(folder))
        return model.eval()

    def load_hf_state_dict(self, hf_state: dict[str, torch.Tensor],
                           source: str = "weights") -> None:
        """Copy tensors named as in Hugging Face's BertModel into this module."""
        ours = self.state_dict()
        loaded = {}
        for hf_name, tensor in hf_state.items():
            name = hf_to_our_name(hf_name)
            if name is None:
                continue                                # pooler, position_ids buffer, heads
            if name not in ours:
                raise UserError(f"{source}: tensor {hf_name!r} names a layer that this config "
                                "does not have; check that config.json matches the weights")
            if tuple(tensor.shape) != tuple(ours[name].shape):
                raise UserError(f"{source}: tensor {hf_name!r} has shape {tuple(tensor.shape)} "
                                f"but config.json implies {tuple(ours[name].shape)}")
            loaded[name] = tensor.to(ours[name].dtype)
        missing = sorted(set(ours) - set(loaded))
        if missing:
            raise UserError(f"{source}: the weights lack {len(missing)} tensors, first "
                            f"{missing[0]!r}; the checkpoint is incomplete or not a BERT encoder")
        self.load_state_dict(loaded)


# Hugging Face name (after the layer number) -> our name. One place for the whole mapping.
_LAYER_RENAMES = {
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up",
    "output.dense": "mlp.down",
    "output.LayerNorm": "mlp_norm",
}
_EMBEDDING_RENAMES = {
    "word_embeddings": "word",
    "position_embeddings": "position",
    "token_type_embeddings": "token_type",
    "LayerNorm": "norm",
}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_EMBED_RE = re.compile(r"embeddings\.(\w+)\.(weight|bias|gamma|beta)$")


def hf_to_our_name(hf_name: str) -> str | None:
    """'encoder.layer.3.attention.self.query.weight' -> 'layers.3.attn.q.weight'; None for
    tensors this encoder does not use. Old checkpoints call LayerNorm's weight/bias gamma/beta."""
    name = hf_name.removeprefix("bert.")
    kind_fix = {"gamma": "weight", "beta": "bias"}
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_RENAMES:
        kind = kind_fix.get(m.group(3), m.group(3))
        return f"layers.{m.group(1)}.{_LAYER_RENAMES[m.group(2)]}.{kind}"
    m = _EMBED_RE.match(name)
    if m and m.group(1) in _EMBEDDING_RENAMES:
        kind = kind_fix.get(m.group(2), m.group(2))
        return f"embeddings.{_EMBEDDING_RENAMES[m.group(1)]}.{kind}"
    return None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, else pytorch_model.bin, as float tensors on the CPU."""
    st_path, bin_path = folder / "model.safetensors", folder / "pytorch_model.bin"
    try:
        if st_path.is_file():
            from safetensors.torch import load_file
            return load_file(str(st_path))
        if bin_path.is_file():
            # weights_only: a .bin is a pickle, and only tensors should come out of it.
            return torch.load(bin_path, map_location="cpu", weights_only=True)
    except Exception as e:                      # corrupt or truncated download
        raise UserError(f"{folder}: cannot read the weights ({type(e).__name__}: {e}); "
                        "delete the folder and fetch the model again") from None
    raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin here; a BERT "
                    "model folder needs its weights")

