"""Will a QLoRA run fit on the GPU? An estimate from config.json alone, before downloading weights.

    python -m tools.memory --model meta-llama/Meta-Llama-3-8B --quantize nf4 --lora-r 16 \\
        --seq-len 2048 --batch-size 2 --grad-checkpointing

Every number is plain arithmetic on the config (see the functions below), counted for this
repository's implementation:

  parameters   per block: q (dim x n_heads*head_dim), k and v (dim x n_kv_heads*head_dim),
               o (n_heads*head_dim x dim), gate and up (dim x hidden), down (hidden x dim), two
               RMSNorm vectors (dim); plus the embedding (vocab x dim), the final norm (dim) and,
               unless tied to the embedding, lm_head (vocab x dim).
  weights      NF4 linears inside the blocks: half a byte per weight, one byte per 64 weights
               (8-bit absmax), 4 bytes per 64*256 weights (nested absmax) and 1.3 KB of codes
               per matrix; embedding, norms and lm_head in the compute dtype.
  LoRA         r * (in + out) float32 numbers per adapted linear; their gradients are float32
               too; AdamW keeps 2 states per number (8 bytes, or 2 bytes with 8-bit AdamW).
  activations  what autograd keeps for backward, per token and block, in bytes (a = bytes of
               the compute dtype, d = dim, h = hidden, q/kv = query/key-value widths):
                 RMSNorm (x2)            2 * (4d+4) its float32 copy of the input, 1/rms
                 attention kernel        a*(2q + 2kv) + 4*n_heads   q, k, v, output, logsumexp
                 SwiGLU                  3h * a     silu input, silu output, up output
                 each LoRA target        4*in + 4r  its float32 input, and A's output
                                         (float32 compute: no copy, so q/k/v share one input,
                                          gate/up one, and o reads the kept attention output)
                 each LoRA target, once  4*r*out    scale * B, which the update's matmul keeps
               The 4-bit base linears keep nothing: their weight is frozen, so they never need
               their input (model/quant/nf4.py). With gradient checkpointing only each block's input
               (d * a per token) is kept, and one block at a time is recomputed in backward.
               It assumes a memory-efficient attention kernel (a plain "math" one would also keep
               the n_heads x T x T attention matrix) and no LoRA dropout (which adds its mask and
               output); without LoRA on q, k, v the first block keeps less than counted.
  logits       only target positions get logits, and at most model.loss.chunk_rows(vocab) of
               them at a time (model/loss.py computes the loss chunk by chunk and recomputes each
               chunk's logits in backward); for each of those positions and each vocab entry: the
               logits in the compute dtype, the float32 log-softmax that cross-entropy keeps and
               the float32 gradient.
  workspace    one dequantized weight (the largest linear, compute dtype) at a time, as
               bitsandbytes' kernel makes it; the plain PyTorch path needs ~15 bytes per weight.
  CUDA context ~0.5 GiB that the driver, CUDA runtime and cuBLAS take before any tensor.
"""

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lora.inject import SHORT_NAMES, LoRAConfig
from model.config import LlamaConfig
from model.errors import UserError
from model.loss import chunk_rows
from model.checkpoint.load import TRAIN_QUANTIZE, parse_quantize

GIB = 1024**3
T4_USABLE_GIB = 15.0          # a "16 GB" T4 reports 15,360 MiB to CUDA
CUDA_CONTEXT_GIB = 0.5
NF4_BLOCK, NESTED_BLOCK = 64, 256
CODE_BYTES = 16 * 4 + 256 * 4 + 4   # NF4 code, dynamic map and offset stored with each matrix
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
OPTIMIZER_BYTES = {"adamw8bit": 2, "adamw": 8}     # per trainable parameter
TARGETS = tuple(SHORT_NAMES)           # q, k, v, o, gate, up, down: lora/inject.py's short names
LORA_INPUT_GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))   # linears fed the same input

# ----------------------------------------------------------------------------- built-in configs
# The numbers of the official config.json files, so that no download is needed to plan.
_LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
              "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
              "torch_dtype": "bfloat16"}
_LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_LLAMA31_8B = {**_LLAMA3_8B, "max_position_embeddings": 131072, "rope_scaling": _LLAMA31_SCALING}
_LLAMA32_1B = {**_LLAMA31_8B, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
               "head_dim": 64, "tie_word_embeddings": True,
               "rope_scaling": {**_LLAMA31_SCALING, "factor": 32.0}}
_LLAMA32_3B = {**_LLAMA32_1B, "hidden_size": 3072, "num_hidden_layers": 28,
               "num_attention_heads": 24, "head_dim": 128}
_INSTRUCT_EOS = {"eos_token_id": [128001, 128008, 128009]}

BUILTIN_CONFIGS = {
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": {**_LLAMA3_8B, "eos_token_id": 128009},
    "unsloth/llama-3-8b-bnb-4bit": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA31_8B, **_INSTRUCT_EOS},
    "meta-llama/Llama-3.2-1B": _LLAMA32_1B,
    "meta-llama/Llama-3.2-1B-Instruct": {**_LLAMA32_1B, **_INSTRUCT_EOS},
    "meta-llama/Llama-3.2-3B": _LLAMA32_3B,
    "meta-llama/Llama-3.2-3B-Instruct": {**_LLAMA32_3B, **_INSTRUCT_EOS},
}


def load_config(model: str) -> tuple[LlamaConfig, str]:
    """(config, where it came from) for a built-in id, a folder or config.json, or a hub id."""
    builtin = {k.lower(): k for k in BUILTIN_CONFIGS}
    if model.lower() in builtin:
        name = builtin[model.lower()]
        config = LlamaConfig.from_hf(BUILTIN_CONFIGS[name], source=f"built-in config of {name}")
        return config, "built-in config"
    path = Path(model).expanduser()
    if path.is_dir():
        return LlamaConfig.from_json(path / "config.json"), str(path / "config.json")
    if path.is_file():
        return LlamaConfig.from_json(path), str(path)
    from model import hub
    try:
        downloaded = hub.download(model, ["config.json"]) / "config.json"
    except UserError as e:  # offline, unknown repo, gated repo, malformed id
        raise UserError(f"--model {model}: not a built-in config, not a folder, and its config.json "
                        f"could not be fetched ({e}); pass a folder that holds config.json (--help "
                        "lists the built-in ids)") from None
    return LlamaConfig.from_json(downloaded), f"{model} (config.json from the hub)"


# ----------------------------------------------------------------------------- the estimate
@dataclass
class MemoryPlanArgs:
    quantize: str = "nf4"                  # "nf4" or "none" (base weights in the compute dtype)
    lora_r: int = LoRAConfig.r
    lora_targets: tuple[str, ...] = TARGETS
    seq_len: int = 2048
    batch_size: int = 2
    grad_checkpointing: bool = False
    optim: str = "adamw8bit"               # "adamw8bit" or "adamw"
    dtype: str = "bfloat16"                # compute dtype of activations and unquantized weights
    gpu_gib: float = T4_USABLE_GIB


@dataclass
class MemoryPlan:
    linear_params: int                     # weights of the linears inside the blocks
    other_params: int                      # embedding, norms, lm_head
    lora_params: int
    parts: dict[str, int] = field(default_factory=dict)   # name -> bytes, in print order
    budget: int = 0                        # usable GPU bytes

    @property
    def total_params(self) -> int:
        return self.linear_params + self.other_params

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def dominant(self, n: int = 2) -> list[str]:
        return sorted(self.parts, key=self.parts.get, reverse=True)[:n]


def linear_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of the 7 linears of one block, by short name."""
    d, h = config.dim, config.hidden_dim
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d),
            "gate": (d, h), "up": (d, h), "down": (h, d)}


def parse_targets(text: str) -> tuple[str, ...]:
    """"q,k,v" or "q_proj,k_proj" -> ("q", "k", "v"), checked against the 7 linears."""
    names = [t.strip().removesuffix("_proj") for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise UserError(f"--lora-targets {text}: '{unknown[0] if unknown else text}' is not one of "
                        f"{','.join(TARGETS)} (or their _proj names)")
    return tuple(dict.fromkeys(names))


def nf4_bytes(n: int) -> int:
    """Bytes of one NF4 matrix of n weights with double quantization (model/quant/nf4.py)."""
    blocks = math.ceil(n / NF4_BLOCK)
    return (n + 1) // 2 + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + CODE_BYTES


def activation_bytes_per_token_block(config: LlamaConfig, args: MemoryPlanArgs) -> int:
    """Bytes autograd keeps per token and block without checkpointing (module docstring)."""
    a = DTYPE_BYTES[args.dtype]
    d, h = config.dim, config.hidden_dim
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    norms = 2 * (4 * d + 4)                       # float32 input copy and 1/rms, twice
    attention = a * (2 * q + 2 * kv) + 4 * config.n_heads
    swiglu = 3 * h * a
    shapes = linear_shapes(config)
    lora = 0
    for group in LORA_INPUT_GROUPS:
        present = [t for t in group if t in args.lora_targets]
        copies = len(present)      # each LoRALinear keeps its own float32 copy of its input
        if a == 4:                 # ... unless there is nothing to cast: then the group shares
            copies = 0 if group == ("o",) else min(copies, 1)   # one (o: the attention output)
        lora += copies * 4 * shapes[group[0]][0] + len(present) * 4 * args.lora_r
    return norms + attention + swiglu + lora


def estimate(config: LlamaConfig, args: MemoryPlanArgs) -> MemoryPlan:
    parse_quantize(args.quantize, allowed=TRAIN_QUANTIZE)   # a training plan: none or nf4
    if args.optim not in OPTIMIZER_BYTES:
        raise UserError(f"--optim {args.optim}: choose {' or '.join(OPTIMIZER_BYTES)}")
    if args.dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype {args.dtype}: choose {', '.join(DTYPE_BYTES)}")
    sizes = {"--lora-r": args.lora_r, "--seq-len": args.seq_len, "--batch-size": args.batch_size}
    for flag, value in sizes.items():
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    a, L = DTYPE_BYTES[args.dtype], config.n_layers
    shapes = linear_shapes(config)

    linear_params = L * sum(i * o for i, o in shapes.values())
    embeddings = config.vocab_size * config.dim * (1 if config.tie_word_embeddings else 2)
    other_params = embeddings + (2 * L + 1) * config.dim          # + RMSNorm weights
    lora_params = L * sum(args.lora_r * (shapes[t][0] + shapes[t][1]) for t in args.lora_targets)

    if args.quantize == "nf4":
        values = L * sum((i * o + 1) // 2 for i, o in shapes.values())   # two weights per byte
        stored = L * sum(nf4_bytes(i * o) for i, o in shapes.values())
        weights = {"NF4 linears: 4-bit values": values, "NF4 linears: absmax, double quant": stored - values}
    else:
        weights = {f"linears ({args.dtype})": linear_params * a}
    tokens = args.batch_size * args.seq_len
    per_block = activation_bytes_per_token_block(config, args)
    # Per block, not per token: each LoRALinear's update keeps scale * B (out x r, float32).
    scaled_b = sum(args.lora_r * shapes[t][1] for t in args.lora_targets) * 4
    if args.grad_checkpointing:
        # block inputs + one block redone
        activations = tokens * (L * config.dim * a + per_block) + scaled_b
    else:
        activations = tokens * L * per_block + L * scaled_b
    targets = args.batch_size * max(args.seq_len - 1, 1)
    largest = max(i * o for i, o in shapes.values())

    parts = {
        **weights,
        f"embeddings, norms, lm_head ({args.dtype})": other_params * a,
        "LoRA parameters (float32)": lora_params * 4,
        "LoRA gradients (float32)": lora_params * 4,
        f"optimizer state ({args.optim})": lora_params * OPTIMIZER_BYTES[args.optim],
        "activations" + (" (checkpointed)" if args.grad_checkpointing else ""): activations,
        "logits and loss": min(targets, chunk_rows(config.vocab_size)) * config.vocab_size * (a + 4 + 4),
        "dequantize workspace": largest * a if args.quantize == "nf4" else 0,
        "CUDA context": int(CUDA_CONTEXT_GIB * GIB),
    }
    return MemoryPlan(linear_params, other_params, lora_params, parts, int(args.gpu_gib * GIB))


# ----------------------------------------------------------------------------- the report
def report(plan: MemoryPlan, config: LlamaConfig, args: MemoryPlanArgs, name: str, source: str) -> str:
    gib = lambda b: f"{b / GIB:8.2f}"  # noqa: E731
    lines = [
        f"Memory plan for {name} ({source})",
        f"  {config.n_layers} blocks, dim {config.dim}, {config.n_heads} heads ({config.n_kv_heads} kv), "
        f"MLP {config.hidden_dim}, vocab {config.vocab_size:,}, tied embeddings: "
        f"{'yes' if config.tie_word_embeddings else 'no'}",
        f"  {'NF4' if args.quantize == 'nf4' else 'unquantized'} base, LoRA r={args.lora_r} "
        f"on {','.join(args.lora_targets)}, {args.optim}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{args.dtype}, gradient checkpointing {'on' if args.grad_checkpointing else 'off'}",
        "",
        "Parameters",
        f"  {'linears inside the blocks':34s}{plan.linear_params:>16,}",
        f"  {'embeddings, norms, lm_head':34s}{plan.other_params:>16,}",
        f"  {'total':34s}{plan.total_params:>16,}",
        f"  {'LoRA (trainable)':34s}{plan.lora_params:>16,}   "
        f"({100 * plan.lora_params / plan.total_params:.2f}% of the total)",
        "",
        f"Memory {'':36s}GiB",
    ]
    lines += [f"  {part:40s}{gib(size)}" for part, size in plan.parts.items()]
    lines.append(f"  {'total':40s}{gib(plan.total)}")
    lines.append("")
    big = ", ".join(f"{p} {plan.parts[p] / GIB:.1f} GiB" for p in plan.dominant())
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"Verdict: {verdict} a 16 GB T4 ({args.gpu_gib:.1f} GiB usable); largest parts: {big}.")
    if not plan.fits:
        if not args.grad_checkpointing:
            lines.append("  Try --grad-checkpointing: it keeps one block's activations, not all of them.")
        lines.append("  A smaller --batch-size or --seq-len shrinks activations and logits in proportion.")
    return "\n".join(lines)


HELP = {
    "model": "a built-in id (" + ", ".join(BUILTIN_CONFIGS) + "), a folder with config.json, "
             "a config.json file, or a hub id whose config.json alone is fetched",
    "quantize": "nf4: the linears inside the blocks in 4 bits (QLoRA); none: all weights in --dtype",
    "lora_r": "LoRA rank r; each adapted linear gets r * (in + out) trainable numbers",
    "lora_targets": "comma-separated linears that get LoRA: q,k,v,o,gate,up,down (or q_proj, ...)",
    "seq_len": "tokens per training sequence",
    "batch_size": "sequences per micro-batch (gradient accumulation does not add memory)",
    "grad_checkpointing": "recompute each block in backward instead of keeping its activations",
    "optim": "adamw8bit: 2 bytes of optimizer state per trainable number; adamw: 8 bytes",
    "dtype": "compute dtype of activations and of the unquantized weights",
    "gpu_gib": "usable GPU memory to compare against, GiB (a 16 GB T4 offers 15.0)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help=HELP["model"])
    p.add_argument("--quantize", default="nf4", choices=TRAIN_QUANTIZE, help=HELP["quantize"])
    p.add_argument("--lora-r", type=int, default=LoRAConfig.r, help=HELP["lora_r"])
    p.add_argument("--lora-targets", default=",".join(TARGETS), help=HELP["lora_targets"])
    p.add_argument("--seq-len", type=int, default=2048, help=HELP["seq_len"])
    p.add_argument("--batch-size", type=int, default=2, help=HELP["batch_size"])
    p.add_argument("--grad-checkpointing", action="store_true", help=HELP["grad_checkpointing"])
    p.add_argument("--optim", default="adamw8bit", choices=tuple(OPTIMIZER_BYTES), help=HELP["optim"])
    p.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPE_BYTES), help=HELP["dtype"])
    p.add_argument("--gpu-gib", type=float, default=T4_USABLE_GIB, help=HELP["gpu_gib"])
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    config, source = load_config(a.model)
    args = MemoryPlanArgs(quantize=a.quantize, lora_r=a.lora_r, lora_targets=parse_targets(a.lora_targets),
                          seq_len=a.seq_len, batch_size=a.batch_size, grad_checkpointing=a.grad_checkpointing,
                          optim=a.optim, dtype=a.dtype, gpu_gib=a.gpu_gib)
    plan = estimate(config, args)
    print(report(plan, config, args, a.model, source))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
