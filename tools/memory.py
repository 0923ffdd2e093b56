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

Several GPUs: --nproc N ranks with --parallel ddp or fsdp, as train.py under torchrun runs them
(training/distributed.py). Every figure is per GPU; --batch-size is per rank, so activations,
logits, workspace and CUDA context are the same on every rank as in one process.
  ddp          every rank holds a full replica of all of the above, plus DDP's gradient buckets:
               one more float32 copy of the LoRA gradients.
  fsdp         FSDP2 (fully_shard) on each block, then on the root, which holds the embedding,
               the final norm and lm_head. Sharded, 1/N on each rank: the NF4 4-bit values, their
               absmax and double quant, the embeddings/norms/lm_head, the LoRA parameters, their
               gradients and the optimizer state (torch AdamW only: bitsandbytes' 8-bit AdamW is
               refused). Gathered in full at once: the root, in the compute dtype (the root is not
               resharded after forward, so it stays gathered for the whole step), and two blocks
               (the one computing, the next one prefetched), each its NF4 bytes, its two norms and
               its LoRA parameters; in backward also one block's float32 LoRA gradients before
               their reduce-scatter. Ignored: per-tensor rounding of the shards, and the 1.1 KB NF4
               code per matrix, which stays whole on every rank but is counted as sharded.
  --cpu-offload  (fsdp only; FSDP2's CPUOffloadPolicy) the sharded parts live in CPU RAM: the GPU
               keeps the gathered parts, activations, logits, workspace and context. The CPU RAM
               each rank needs is printed after the GPU total, not in it.
  CPU RAM while loading (fsdp): train.py reads the checkpoint block by block; each block is
               quantized in CPU RAM, gets LoRA and is sharded before the next one is read, and
               the root (embedding, final norm, lm_head) comes last. So a rank's CPU RAM holds
               one whole block, then the whole root, plus, with --cpu-offload, the shards made
               so far.
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
PARALLEL = ("none", "ddp", "fsdp")     # train.py's --parallel
FSDP_GATHERED_BLOCKS = 2               # the block computing and the next one, prefetched
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
_LLAMA3_70B = {**_LLAMA3_8B, "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
               "intermediate_size": 28672}
_LLAMA31_70B = {**_LLAMA3_70B, "max_position_embeddings": 131072, "rope_scaling": _LLAMA31_SCALING}
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
    "meta-llama/Meta-Llama-3-70B": _LLAMA3_70B,
    "meta-llama/Meta-Llama-3-70B-Instruct": {**_LLAMA3_70B, "eos_token_id": 128009},
    "meta-llama/Llama-3.1-70B": _LLAMA31_70B,
    "meta-llama/Llama-3.1-70B-Instruct": {**_LLAMA31_70B, **_INSTRUCT_EOS},
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
    nproc: int = 1                         # ranks (GPUs) in the run
    parallel: str = "none"                 # "none", "ddp" or "fsdp"
    cpu_offload: bool = False              # FSDP only: the shards live in CPU RAM


@dataclass
class MemoryPlan:
    linear_params: int                     # weights of the linears inside the blocks
    other_params: int                      # embedding, norms, lm_head
    lora_params: int
    parts: dict[str, int] = field(default_factory=dict)   # name -> bytes per GPU, in print order
    budget: int = 0                        # usable GPU bytes
    offloaded: dict[str, int] = field(default_factory=dict)   # name -> bytes of CPU RAM per rank
    loading: int = 0                       # FSDP: peak CPU RAM per rank while train.py loads the model

    @property
    def total_params(self) -> int:
        return self.linear_params + self.other_params

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def offloaded_total(self) -> int:
        return sum(self.offloaded.values())

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


def fsdp_units(config: LlamaConfig, args: MemoryPlanArgs) -> tuple[int, int, int]:
    """Bytes of FSDP's units in full: (one block: its linears, two norms and float32 LoRA; the
    root: embedding, final norm, lm_head; one block's LoRA parameters)."""
    a, shapes = DTYPE_BYTES[args.dtype], linear_shapes(config)
    root = (config.vocab_size * (1 if config.tie_word_embeddings else 2) + 1) * config.dim * a
    if args.quantize == "nf4":
        block_weights = sum(nf4_bytes(i * o) for i, o in shapes.values())
    else:
        block_weights = sum(i * o for i, o in shapes.values()) * a
    block_lora = sum(args.lora_r * (shapes[t][0] + shapes[t][1]) for t in args.lora_targets)
    block = block_weights + 2 * config.dim * a + block_lora * 4        # + its two RMSNorm vectors
    return block, root, block_lora


def fsdp_loading(config: LlamaConfig, args: MemoryPlanArgs) -> int:
    """Peak CPU RAM per rank while train.py loads: each block is read whole, gets LoRA and is
    sharded before the next one is read; the root comes last. The shards go to the GPU as they
    are made, or stay in CPU RAM with --cpu-offload."""
    block, root, _ = fsdp_units(config, args)
    shard = -(-block // args.nproc) if args.cpu_offload else 0
    return max((config.n_layers - 1) * shard + block, config.n_layers * shard + root)


def fsdp_gathered(config: LlamaConfig, args: MemoryPlanArgs) -> dict[str, int]:
    """Bytes FSDP holds unsharded on every rank at the same time (module docstring)."""
    block, root, block_lora = fsdp_units(config, args)
    n = min(FSDP_GATHERED_BLOCKS, config.n_layers)
    return {"gathered: root (embedding, norm, lm_head)": root,
            f"gathered: {n} block{'s' if n > 1 else ''}": n * block,
            "unsharded: 1 block's LoRA gradients (float32)": block_lora * 4}


def check_parallel(args: MemoryPlanArgs):
    """The combinations train.py accepts, refused here with the same flags named."""
    if args.parallel not in PARALLEL:
        raise UserError(f"--parallel {args.parallel}: choose {', '.join(PARALLEL)}")
    if args.nproc > 1 and args.parallel == "none":
        raise UserError(f"--nproc {args.nproc} with --parallel none: one process uses one GPU; "
                        "add --parallel ddp or --parallel fsdp")
    if args.cpu_offload and args.parallel != "fsdp":
        raise UserError(f"--cpu-offload with --parallel {args.parallel}: offloading is FSDP's; "
                        "add --parallel fsdp or drop --cpu-offload")
    if args.parallel == "fsdp" and args.optim != "adamw":
        raise UserError(f"--optim {args.optim} with --parallel fsdp: FSDP trains with torch AdamW only "
                        "(bitsandbytes' 8-bit AdamW does not step sharded parameters); use --optim adamw")


def estimate(config: LlamaConfig, args: MemoryPlanArgs) -> MemoryPlan:
    parse_quantize(args.quantize, allowed=TRAIN_QUANTIZE)   # a training plan: none or nf4
    if args.optim not in OPTIMIZER_BYTES:
        raise UserError(f"--optim {args.optim}: choose {' or '.join(OPTIMIZER_BYTES)}")
    if args.dtype not in DTYPE_BYTES:
        raise UserError(f"--dtype {args.dtype}: choose {', '.join(DTYPE_BYTES)}")
    sizes = {"--lora-r": args.lora_r, "--seq-len": args.seq_len, "--batch-size": args.batch_size,
             "--nproc": args.nproc}
    for flag, value in sizes.items():
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    check_parallel(args)
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

    # What one process keeps for the whole run: DDP replicates it, FSDP shards exactly this.
    state = {
        **weights,
        f"embeddings, norms, lm_head ({args.dtype})": other_params * a,
        "LoRA parameters (float32)": lora_params * 4,
        "LoRA gradients (float32)": lora_params * 4,
        f"optimizer state ({args.optim})": lora_params * OPTIMIZER_BYTES[args.optim],
    }
    # What each rank's own micro-batch and GPU need, however the state is spread.
    per_rank = {
        "activations" + (" (checkpointed)" if args.grad_checkpointing else ""): activations,
        "logits and loss": min(targets, chunk_rows(config.vocab_size)) * config.vocab_size * (a + 4 + 4),
        "dequantize workspace": largest * a if args.quantize == "nf4" else 0,
        "CUDA context": int(CUDA_CONTEXT_GIB * GIB),
    }
    extra, offloaded, loading = {}, {}, 0
    if args.parallel == "ddp":
        extra = {"DDP gradient buckets (float32)": lora_params * 4}
    elif args.parallel == "fsdp":
        n = args.nproc
        loading = fsdp_loading(config, args)
        state = {f"sharded: {part} (1/{n})": -(-size // n) for part, size in state.items()}   # ceil
        extra = fsdp_gathered(config, args)
        if args.cpu_offload:
            state, offloaded = {}, state
    parts = {**state, **extra, **per_rank}
    return MemoryPlan(linear_params, other_params, lora_params, parts, int(args.gpu_gib * GIB), offloaded,
                      loading)


# ----------------------------------------------------------------------------- the report
def describe_ranks(args: MemoryPlanArgs) -> str:
    """The header line of a --parallel plan: what each GPU holds."""
    n = args.nproc
    ranks = f"per GPU, {n} rank{'s' if n > 1 else ''}"
    if args.parallel == "ddp":
        return f"{ranks}, DDP (each rank holds a full replica, plus DDP's gradient buckets)"
    where = ", in CPU RAM" if args.cpu_offload else ""
    return f"{ranks}, FSDP (each rank holds 1/{n} of the sharded state{where})"


def gpu_words(args: MemoryPlanArgs) -> str:
    if args.gpu_gib == T4_USABLE_GIB:   # the default, the card this project's recipes target
        gpu = f"a 16 GB T4 ({args.gpu_gib:.1f} GiB usable)"
    else:
        gpu = f"one {args.gpu_gib:.1f} GiB GPU"
    return gpu + (" per rank" if args.nproc > 1 else "")


def report(plan: MemoryPlan, config: LlamaConfig, args: MemoryPlanArgs, name: str, source: str) -> str:
    gib = lambda b: f"{b / GIB:8.2f}"  # noqa: E731
    width = max(40, *(len(part) + 2 for part in plan.parts))
    lines = [
        f"Memory plan for {name} ({source})",
        f"  {config.n_layers} blocks, dim {config.dim}, {config.n_heads} heads ({config.n_kv_heads} kv), "
        f"MLP {config.hidden_dim}, vocab {config.vocab_size:,}, tied embeddings: "
        f"{'yes' if config.tie_word_embeddings else 'no'}",
        f"  {'NF4' if args.quantize == 'nf4' else 'unquantized'} base, LoRA r={args.lora_r} "
        f"on {','.join(args.lora_targets)}, {args.optim}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{args.dtype}, gradient checkpointing {'on' if args.grad_checkpointing else 'off'}",
        *([f"  {describe_ranks(args)}; batch {args.batch_size} x {args.seq_len} on each rank"]
          if args.parallel != "none" else []),
        "",
        "Parameters",
        f"  {'linears inside the blocks':34s}{plan.linear_params:>16,}",
        f"  {'embeddings, norms, lm_head':34s}{plan.other_params:>16,}",
        f"  {'total':34s}{plan.total_params:>16,}",
        f"  {'LoRA (trainable)':34s}{plan.lora_params:>16,}   "
        f"({100 * plan.lora_params / plan.total_params:.2f}% of the total)",
        "",
        f"{'Memory per GPU' if args.parallel != 'none' else 'Memory':{width + 7}s}GiB",
    ]
    lines += [f"  {part:{width}s}{gib(size)}" for part, size in plan.parts.items()]
    lines.append(f"  {'total':{width}s}{gib(plan.total)}")
    if plan.offloaded:
        lines.append(f"  {'CPU RAM per rank (offloaded shards)':{width}s}{gib(plan.offloaded_total)}"
                     "   (not on the GPU)")
    if plan.loading:
        lines.append(f"  {'CPU RAM per rank while loading':{width}s}{gib(plan.loading)}"
                     "   (one block whole at a time, then the root)")
    lines.append("")
    big = ", ".join(f"{p} {plan.parts[p] / GIB:.1f} GiB" for p in plan.dominant())
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"Verdict: {verdict} {gpu_words(args)}; largest parts: {big}.")
    if not plan.fits:
        if not args.grad_checkpointing:
            lines.append("  Try --grad-checkpointing: it keeps one block's activations, not all of them.")
        lines.append("  A smaller --batch-size or --seq-len shrinks activations and logits in proportion.")
        if args.parallel == "ddp":
            lines.append("  --parallel fsdp shards what DDP replicates: weights, LoRA state, optimizer state.")
        if args.parallel == "fsdp" and not args.cpu_offload:
            sharded = sum(size for part, size in plan.parts.items() if part.startswith("sharded: "))
            lines.append(f"  --cpu-offload moves the sharded parts ({sharded / GIB:.1f} GiB) to CPU RAM; "
                         "a larger --nproc divides them.")
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
    "gpu_gib": "usable GPU memory per GPU to compare against, GiB (a 16 GB T4 offers 15.0, a 24 GB "
               "card about 23.6: 23.5 leaves a margin)",
    "nproc": "GPUs (ranks) in the run, as torchrun --nproc_per_node; figures are per GPU",
    "parallel": "none: one process; ddp: a full replica on every rank; fsdp: weights, LoRA state "
                "and optimizer state sharded across the ranks (FSDP2), with --optim adamw",
    "cpu_offload": "with --parallel fsdp: the shards, their gradients and AdamW's state live in CPU "
                   "RAM; the GPU keeps only what is gathered and the per-step working set",
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
    p.add_argument("--nproc", type=int, default=1, help=HELP["nproc"])
    p.add_argument("--parallel", default="none", choices=PARALLEL, help=HELP["parallel"])
    p.add_argument("--cpu-offload", action="store_true", help=HELP["cpu_offload"])
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    config, source = load_config(a.model)
    args = MemoryPlanArgs(quantize=a.quantize, lora_r=a.lora_r, lora_targets=parse_targets(a.lora_targets),
                          seq_len=a.seq_len, batch_size=a.batch_size, grad_checkpointing=a.grad_checkpointing,
                          optim=a.optim, dtype=a.dtype, gpu_gib=a.gpu_gib,
                          nproc=a.nproc, parallel=a.parallel, cpu_offload=a.cpu_offload)
    plan = estimate(config, args)
    print(report(plan, config, args, a.model, source))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
