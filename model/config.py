"""LlamaConfig: the handful of numbers that define a Llama-3-family model.

Read from a Hugging Face `config.json` (architecture `LlamaForCausalLM`). Two spellings of the
rotary settings exist in the wild and both are accepted:
  - the classic keys on the hub:      "rope_theta": 500000.0, "rope_scaling": {...}
  - transformers 5's single key:      "rope_parameters": {"rope_type": ..., "rope_theta": ...}
Anything that would change the maths in a way this code does not implement (biases, another
activation, another rope scaling) is refused by name rather than silently ignored.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from model.errors import UserError


@dataclass
class RopeScaling:
    """Llama-3.1's "llama3" frequency scaling for long context (see model/llama.py)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class LlamaConfig:
    vocab_size: int = 128256
    dim: int = 4096                 # hidden_size
    n_layers: int = 32              # num_hidden_layers
    n_heads: int = 32               # num_attention_heads (query heads)
    n_kv_heads: int = 8             # num_key_value_heads (grouped-query attention)
    hidden_dim: int = 14336         # intermediate_size of the SwiGLU MLP
    head_dim: int = 0               # 0 means dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 8192         # max_position_embeddings
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 128000
    eos_token_ids: list[int] = field(default_factory=lambda: [128001])
    pad_token_id: int | None = None
    torch_dtype: str = "bfloat16"   # how the checkpoint stores its weights

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads != 0:
            raise UserError(f"num_attention_heads ({self.n_heads}) must be a multiple of "
                            f"num_key_value_heads ({self.n_kv_heads})")

    # ---------------------------------------------------------------- reading config.json
    @classmethod
    def from_json(cls, path: str | Path) -> "LlamaConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no config.json here; a model folder needs one")
        try:
            hf = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf(hf, source=str(path))

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "LlamaConfig":
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if archs and archs[0] != "LlamaForCausalLM":
            raise UserError(f"{source}: architecture '{archs[0]}' is not supported; "
                            "only LlamaForCausalLM (Llama-3 family, SmolLM2) is")
        if not archs and model_type not in (None, "llama"):
            raise UserError(f"{source}: model_type '{model_type}' is not supported; only 'llama' is")
        if hf.get("hidden_act", "silu") != "silu":
            raise UserError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported; only 'silu' is")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                raise UserError(f"{source}: '{key}': true is not supported (Llama-3 has no biases)")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                    "intermediate_size"):
            if key not in hf:
                raise UserError(f"{source}: required key '{key}' is missing")

        theta, scaling = _read_rope(hf, source)
        eos = hf.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            hidden_dim=hf["intermediate_size"],
            head_dim=hf.get("head_dim") or 0,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            torch_dtype=hf.get("torch_dtype") or hf.get("dtype") or "float32",
        )

    # ---------------------------------------------------------------- writing config.json
    def to_hf(self, torch_dtype: str | None = None) -> dict:
        """The classic hub spelling, which transformers 4 and 5 both read."""
        eos = self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids)
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "intermediate_size": self.hidden_dim,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None
            else {"rope_type": "llama3", **asdict(self.rope_scaling)},
            "max_position_embeddings": self.max_seq_len,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype or self.torch_dtype,
        }


def _read_rope(hf: dict, source: str) -> tuple[float, RopeScaling | None]:
    """Returns (rope_theta, llama3 scaling or None) from either spelling (or both: transformers 5
    writes rope_parameters, older files and hand edits use rope_scaling)."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling, kind = None, "default"
    for candidate in (params, hf.get("rope_scaling") or {}):
        kind = candidate.get("rope_type", candidate.get("type", "default"))
        if kind != "default":
            scaling = candidate
            break
    if scaling is None or kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise UserError(f"{source}: rope scaling type '{kind}' is not supported; only 'llama3' is")
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise UserError(f"{source}: llama3 rope scaling is missing key {e}") from None
