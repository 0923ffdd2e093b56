"""The Llama-3 family, by hand: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

    input_ids (B, T)
      -> embed_tokens                                   (B, T, dim)
      -> n_layers x Block:
           h = x + Attention(RMSNorm(x))                 pre-norm residual
           x = h + MLP(RMSNorm(h))
      -> norm -> lm_head (or the embedding, when tied)  (B, T, vocab)

Module names follow the Hugging Face checkpoints (q_proj, gate_proj, input_layernorm, ...), minus
their "model." prefix, so weights load by name and LoRA targets read the same as everywhere else.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.config import LlamaConfig, RopeScaling


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and cast back (as Meta and HF do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ----------------------------------------------------------------------------- rotary embeddings
def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """The inverse frequencies of rotary embeddings, (head_dim // 2,), float32.

    Llama-3.1's "llama3" scaling stretches context: wavelengths longer than the original context
    / low_freq_factor are slowed down by `factor`, those shorter than context / high_freq_factor
    are kept, and the band between is blended smoothly.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    old_ctx = scaling.original_max_position_embeddings
    low_freq_wavelen = old_ctx / scaling.low_freq_factor
    high_freq_wavelen = old_ctx / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, blended, scaled)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos and sin for the given positions, each (T, head_dim), in `dtype`."""
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim // 2)
    emb = torch.cat((freqs, freqs), dim=-1)                 # (T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates pairs (x[i], x[i + head_dim/2]) by position-dependent angles.

    HF checkpoints pair dimension i with i + head_dim/2 ("rotate half"); Meta's original weights
    pair neighbours (2i, 2i+1). Both are the same rotation under a permutation of the q/k rows.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- attention
class KVCache:
    """Preallocated keys and values for generation: (B, n_kv_heads, max_len, head_dim) each."""

    def __init__(self, batch_size, max_len, n_kv_heads, head_dim, dtype, device):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start, k: torch.Tensor, v: torch.Tensor, row: int | None = None):
        """Writes positions [start, start + T) and returns keys/values for [0, start + T).

        Batched serving (model/batch_generation.py) adds two cases: `row` fills one row of the
        cache with a new prompt (k, v are (1, nkv, T, hd)) while the other rows keep theirs, and
        a tensor `start` (B,) puts one new token in each of the first B rows, at that row's own
        position."""
        if isinstance(start, torch.Tensor):                    # (B,): one token per row
            n = k.shape[0]                                     # rows 0..n-1 of the cache
            rows = torch.arange(n, device=k.device)
            self.k[rows, :, start] = k[:, :, 0]
            self.v[rows, :, start] = v[:, :, 0]
            if torch.compiler.is_compiling():   # model/compile.py: every position, masked
                return self.k[:n], self.v[:n]
            end = int(start.max()) + 1
            return self.k[:n, :, :end], self.v[:n, :, :end]
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions; asked for {end}")
        if row is not None:
            self.k[row, :, start:end] = k[0]
            self.v[row, :, start:end] = v[0]
            return self.k[row:row + 1, :, :end], self.v[row:row + 1, :, :end]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads.

        q heads:  q0 q1 q2 | q3 q4 q5 | q6 q7 q8        (SmolLM2: 9 query heads)
        kv heads:     k0   |    k1    |    k2           (3 kv heads, each serves 3 query heads)
    """

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.qkv_proj: nn.Module | None = None   # q, k and v in one matrix: see fuse_projections
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, start_pos=0, cache_row: int | None = None):
        B, T, _ = x.shape
        if self.qkv_proj is not None:   # inference: one product instead of three
            kv = self.n_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_dim, kv, kv], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start_pos, k, v, cache_row)  # (B, nkv, start_pos + T, hd)

        # Which keys each query may see. One new token sees everything cached; a fresh prompt is
        # plain causal; a chunk appended after cached positions needs an explicit mask; rows at
        # positions of their own (batched serving) see their own cached keys only.
        mask, causal = None, False
        if isinstance(start_pos, torch.Tensor):                       # (B,), T == 1
            keys = torch.arange(k.shape[2], device=x.device)
            mask = (keys[None, :] <= start_pos[:, None])[:, None, None, :]  # (B, 1, 1, S)
        elif T > 1 and start_pos == 0:
            causal = True
        elif T > 1:
            q_pos = torch.arange(start_pos, start_pos + T, device=x.device)[:, None]
            mask = torch.arange(k.shape[2], device=x.device)[None, :] <= q_pos  # (T, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.gate_up_proj: nn.Module | None = None   # gate and up in one matrix: fuse_projections

    def forward(self, x):
        if self.gate_up_proj is not None:   # inference: one product instead of two
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, start_pos=0, cache_row: int | None = None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos, cache_row)
        return h + self.mlp(self.post_attention_layernorm(h))


# ----------------------------------------------------------------------------- the model
class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        # Tied models (Llama-3.2 1B/3B, SmolLM2) reuse the embedding matrix as the output layer.
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
                             persistent=False)
        self.gradient_checkpointing = False
        self.compiled_decode = None   # model/compile.py: a torch.compile'd self.decode

    def hidden_states(self, input_ids: torch.Tensor, start_pos=0,
                      cache_row: int | None = None) -> torch.Tensor:
        """The final-normed hidden states, (B, T, dim). With a KV cache set up, `start_pos` says
        where these tokens go; without one it must be 0. Batched serving also passes a tensor
        start_pos (B,) with one token per row, or a cache_row to fill with one new prompt."""
        x = self.embed_tokens(input_ids)  # (B, T, dim)
        if isinstance(start_pos, torch.Tensor):  # each row at its own position
            cos, sin = rope_cos_sin(self.inv_freq, start_pos, x.dtype)    # (B, head_dim) each
            cos, sin = cos[:, None, None, :], sin[:, None, None, :]      # (B, 1, 1, head_dim)
        else:
            positions = torch.arange(start_pos, start_pos + input_ids.shape[1], device=input_ids.device)
            cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)  # (T, head_dim) each
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                # Recompute this block's activations in backward instead of keeping them.
                x = checkpoint(layer, x, cos, sin, start_pos, use_reentrant=False)
            else:
                x = layer(x, cos, sin, start_pos, cache_row)
        return self.norm(x)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., dim) -> logits (..., vocab)."""
        if self.lm_head is None:
            return F.linear(h, self.embed_tokens.weight)
        return self.lm_head(h)

    def forward(self, input_ids: torch.Tensor, start_pos=0) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab)."""
        return self.output(self.hidden_states(input_ids, start_pos))

    def decode(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One new token per row at its own position: token_ids (B, 1), positions (B,) ->
        logits (B, vocab). The step that model/compile.py compiles."""
        return self.output(self.hidden_states(token_ids, positions)[:, -1])

    def fuse_projections(self):
        """For inference only: q, k and v become one (nh + 2 nkv) * hd x dim matrix per block,
        and gate and up one 2 hidden x dim matrix, so a decode step runs 4 products per block, not
        7. The separate linears are removed; training, LoRA and saving use the unfused model."""
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_proj = _stacked(attn.q_proj, attn.k_proj, attn.v_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj
            mlp.gate_up_proj = _stacked(mlp.gate_proj, mlp.up_proj)
            del mlp.gate_proj, mlp.up_proj

    # ------------------------------------------------------------------ generation cache
    def setup_cache(self, batch_size: int, max_len: int, dtype=None, device=None):
        """Allocates a KV cache of `max_len` positions in every attention layer."""
        max_len = min(max_len, self.config.max_seq_len)
        dtype = dtype or self.embed_tokens.weight.dtype
        device = device or self.embed_tokens.weight.device
        for layer in self.layers:
            attn = layer.self_attn
            attn.kv_cache = KVCache(batch_size, max_len, attn.n_kv_heads, attn.head_dim, dtype, device)
        return max_len

    def clear_cache(self):
        for layer in self.layers:
            layer.self_attn.kv_cache = None

    @property
    def cache_len(self) -> int:
        cache = self.layers[0].self_attn.kv_cache
        return 0 if cache is None else cache.k.shape[2]


def _stacked(*linears: nn.Linear) -> nn.Linear:
    """One frozen linear whose output is the given linears' outputs, one after another."""
    weight = torch.cat([m.weight.detach() for m in linears])          # (sum of out, in)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device,
                      dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused
