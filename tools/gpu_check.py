"""Is this GPU ready for the recipe? A self-check to run before a long training run (about a
minute on a T4).

    python -m tools.gpu_check                  # the Llama-3-8B shape, all 32 blocks
    python -m tools.gpu_check --layers 4       # a quicker look: 4 of the 32 blocks

Nothing is downloaded: the model is our Llama-3-8B-shaped network with random weights, drawn on
the GPU one matrix at a time and quantized to NF4 there (the full-precision model never exists).
Then, with LoRA r16 alpha 16 on the seven linears, it takes optimizer steps the way
`python train.py --config llama3-8b-t4` does (training/step.py): micro-batch 2, gradient
checkpointing, AdamW 8-bit, bf16 autocast where the GPU has bf16, else fp16 with a GradScaler
(a T4). It prints one table:

  gpu          the card, its memory, compute capability, and whether it has bf16
  nf4 matmul   our NF4 linear (PyTorch dequantize, model/quant/nf4.py) against bitsandbytes'
               CUDA kernel (matmul_4bit) on the same 4-bit bytes, for 1 row and for 16: the
               largest difference relative to the largest output must stay under 1e-3
  train step   the loss is finite and the LoRA weights moved (a float16 step that overflows is
               skipped by the GradScaler, which then lowers its scale: so it takes --steps steps)
  peak memory  torch.cuda.max_memory_allocated over the steps against the memory planner's
               estimate for the same shape and settings (tools/memory.py, less the CUDA context
               it adds); more than 25% above the estimate is a warning

It exits 1 when a check fails, else 0. Without a GPU it says so and exits 0. bench/bench_gpu.py is
the side-by-side benchmark against transformers + peft + bitsandbytes; this is the quick check.
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

from model.config import LlamaConfig
from model.errors import UserError

GIB = 1024**3
NF4_LIMIT = 1e-3          # largest |ours - bitsandbytes| / largest |bitsandbytes| output
MEMORY_WARN = 1.25        # measured peak / planned peak above which memory is flagged
SHAPES = {"llama3-8b": "meta-llama/Meta-Llama-3-8B"}   # tools.memory's built-in configs
TINY = {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@dataclass
class Check:
    name: str
    status: str          # "ok", "warn", "FAIL" or "skip"
    detail: str


def format_table(checks: list[Check]) -> str:
    """The result table: one line per check, columns padded to the longest entry."""
    rows = [("check", "result", "detail")] + [(c.name, c.status, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 6}")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "FAIL" for c in checks) else 0


# ----------------------------------------------------------------------------- the model
def shape_config(shape: str, layers: int | None = None) -> LlamaConfig:
    """The config of --shape, with only its first `layers` blocks when given."""
    from tools.memory import BUILTIN_CONFIGS
    hf = dict(TINY) if shape == "tiny" else dict(BUILTIN_CONFIGS[SHAPES[shape]])
    if layers is not None:
        if not 1 <= layers <= hf["num_hidden_layers"]:
            raise UserError(f"--layers {layers}: the {shape} shape has 1 to {hf['num_hidden_layers']} blocks")
        hf["num_hidden_layers"] = layers
    return LlamaConfig.from_hf(hf, source=f"the {shape} shape")


def random_nf4_llama(config: LlamaConfig, dtype: torch.dtype, device, seed: int = 0):
    """Our Llama with every linear of the blocks in NF4, filled from random weights (normal, std
    0.02, as transformers initialises) drawn on `device` one matrix at a time; embeddings, norms
    and lm_head in `dtype`. Frozen, in eval mode."""
    from model.llama import Llama, rope_frequencies
    from model.quant.linear4bit import Linear4bit, replace_linears_with_4bit
    device = torch.device(device)
    with torch.device("meta"):
        model = Llama(config)
    replace_linears_with_4bit(model, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in model.modules():
        if isinstance(module, Linear4bit):
            weight = torch.empty(module.weight_shape, dtype=dtype, device=device)
            module.quantize_(weight.normal_(0.0, 0.02, generator=gen))  # (out, in)
            del weight
    for name, param in list(model.named_parameters()):
        owner, leaf = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
        value = torch.empty(param.shape, dtype=dtype, device=device)
        value = value.normal_(0.0, 0.02, generator=gen) if param.dim() == 2 else value.fill_(1.0)
        setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=False))
    model.inv_freq = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device)
    return model.eval()


def recipe_dtype(device: torch.device) -> torch.dtype:
    """What --dtype auto picks: bf16 where the GPU has it, fp16 on older GPUs (T4); fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ----------------------------------------------------------------------------- the checks
def gpu_check(device: torch.device) -> Check:
    p = torch.cuda.get_device_properties(device)
    bf16 = "yes" if torch.cuda.is_bf16_supported() else "no: fp16 with a GradScaler"
    return Check("gpu", "ok", f"{p.name}, {p.total_memory / GIB:.1f} GiB, compute capability "
                              f"{p.major}.{p.minor}, bf16 {bf16}")


def nf4_matmul_check(device: torch.device, dtype: torch.dtype, size: int = 4096, seed: int = 0) -> Check:
    """x @ W^T with W in NF4: our dequantize + matmul against bitsandbytes' matmul_4bit."""
    from model.quant.nf4 import _bitsandbytes, bitsandbytes_state, dequantize_nf4, quantize_nf4
    if _bitsandbytes() is None:
        return Check("nf4 matmul", "FAIL", "bitsandbytes is not installed or has no kernel for this "
                                           "device (pip install bitsandbytes)")
    import bitsandbytes as bnb
    gen = torch.Generator(device=device).manual_seed(seed)
    weight = torch.empty(size, size, dtype=dtype, device=device).normal_(0, 0.02, generator=gen)  # (out, in)
    packed, state = quantize_nf4(weight)
    worst = 0.0
    for rows in (1, 16):    # one row takes bitsandbytes' inference kernel, 16 its dequantize + matmul
        x = torch.empty(rows, size, dtype=dtype, device=device).normal_(generator=gen)      # (rows, in)
        ours = torch.nn.functional.linear(x, dequantize_nf4(packed, state, dtype))         # (rows, out)
        theirs = bnb.matmul_4bit(x, packed.t(), quant_state=bitsandbytes_state(state, dtype))
        worst = max(worst, float((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()))
    status = "ok" if worst <= NF4_LIMIT else "FAIL"
    return Check("nf4 matmul", status, f"{size}x{size}, {str(dtype).removeprefix('torch.')}: largest "
                                       f"difference to bitsandbytes' kernel {worst:.1e} of the output "
                                       f"(limit {NF4_LIMIT:.0e})")


def train_step_check(config: LlamaConfig, device: torch.device, dtype: torch.dtype, seq_len: int,
                     batch_size: int, steps: int, optim: str = "adamw8bit", seed: int = 0) -> tuple[Check, dict]:
    """Optimizer steps of the recipe on a random NF4 model; (the check, figures for the others)."""
    from lora import LoRAConfig, inject
    from model.loss import TargetLoss
    from training.step import make_optimizer, make_scaler, train_step
    model = random_nf4_llama(config, dtype, device, seed)
    torch.manual_seed(seed)
    inject(model, LoRAConfig())                  # the recipe's: r 16, alpha 16 on all seven linears
    model.gradient_checkpointing = True
    model.train()
    loss_module = TargetLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(optim, params, lr=2e-4, weight_decay=0.01)
    fp16 = dtype == torch.float16
    scaler = make_scaler(fp16, device_type=device.type)
    amp = dtype != torch.float32
    lora_b = [p for n, p in model.named_parameters() if n.endswith("lora_B")]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(seed)
    losses, seconds = [], []
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=gen)    # (B, T)
        t0 = time.perf_counter()
        loss, _, _ = train_step(loss_module, [{"input_ids": ids, "labels": ids}], params, optimizer,
                                scaler, 1.0, device, dtype, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
        losses.append(loss)
    moved = any(bool(b.detach().abs().sum() > 0) for b in lora_b)   # B starts at zero
    figures = {"peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
               "losses": losses, "seconds": seconds}
    precision = "fp16 + GradScaler" if fp16 else str(dtype).removeprefix("torch.")
    what = (f"{precision}, {'AdamW 8-bit' if optim == 'adamw8bit' else 'AdamW'}, checkpointing, "
            f"{config.n_layers} blocks, batch {batch_size} x {seq_len}: loss "
            f"{' -> '.join(f'{x:.3f}' for x in losses)}, {min(seconds):.2f} s/step")
    if not all(math.isfinite(x) for x in losses):
        return Check("train step", "FAIL", what + "; the loss is not finite"), figures
    if not moved:
        return Check("train step", "FAIL", what + "; no step changed the LoRA weights"
                     + (" (the GradScaler skipped them all: raise --steps)" if fp16 else "")), figures
    return Check("train step", "ok", what), figures


def memory_check(config: LlamaConfig, peak: int, dtype: torch.dtype, seq_len: int, batch_size: int,
                 optim: str, gpu_bytes: int) -> Check:
    """The measured peak against tools.memory's plan for the same run (less the CUDA context,
    which max_memory_allocated does not see)."""
    from tools.memory import CUDA_CONTEXT_GIB, MemoryPlanArgs, estimate
    args = MemoryPlanArgs(quantize="nf4", seq_len=seq_len, batch_size=batch_size, grad_checkpointing=True,
                          optim=optim, dtype=str(dtype).removeprefix("torch."), gpu_gib=gpu_bytes / GIB)
    planned = estimate(config, args).total - CUDA_CONTEXT_GIB * GIB
    ratio = peak / planned
    status = "ok" if ratio <= MEMORY_WARN else "warn"
    return Check("peak memory", status, f"{peak / GIB:.2f} GiB measured, {planned / GIB:.2f} GiB planned "
                                        f"by tools.memory ({ratio:.2f}x)")


# ----------------------------------------------------------------------------- the command
def run_checks(args, device: torch.device) -> list[Check]:
    dtype = recipe_dtype(device)
    config = shape_config(args.shape, args.layers)
    checks = [gpu_check(device)] if device.type == "cuda" else []
    checks.append(nf4_matmul_check(device, torch.float16 if dtype == torch.float32 else dtype,
                                   size=4096 if args.shape != "tiny" else 256))
    step, figures = train_step_check(config, device, dtype, args.seq_len, args.batch_size, args.steps, args.optim)
    checks.append(step)
    if figures["peak"] is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        checks.append(memory_check(config, figures["peak"], dtype, args.seq_len, args.batch_size, args.optim, total))
    else:
        checks.append(Check("peak memory", "skip", "only measured on a GPU"))
    return checks


HELP = {
    "layers": "blocks of the shape to build (default: all; fewer is quicker and smaller)",
    "seq_len": "tokens per sequence of the training steps",
    "batch_size": "sequences per step (the recipe's micro-batch is 2)",
    "steps": "optimizer steps to take (a float16 step that overflows is skipped)",
    "optim": "adamw8bit (the recipe's) or adamw",
    "shape": "llama3-8b, or tiny: a 2-block toy that checks the script itself, e.g. on a CPU",
    "device": "cuda (the GPU to check; cuda:N for another) or cpu (with --shape tiny)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=None, help=HELP["layers"])
    p.add_argument("--seq-len", type=int, default=512, help=HELP["seq_len"])
    p.add_argument("--batch-size", type=int, default=2, help=HELP["batch_size"])
    p.add_argument("--steps", type=int, default=2, help=HELP["steps"])
    p.add_argument("--optim", default="adamw8bit", choices=("adamw8bit", "adamw"), help=HELP["optim"])
    p.add_argument("--shape", default="llama3-8b", choices=("llama3-8b", "tiny"), help=HELP["shape"])
    p.add_argument("--device", default="cuda", help=HELP["device"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--seq-len", args.seq_len), ("--batch-size", args.batch_size), ("--steps", args.steps)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"No CUDA GPU is visible to PyTorch {torch.__version__} "
              f"({'built without CUDA' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}): "
              "nothing to check. On Colab: Runtime > Change runtime type > T4 GPU.")
        return 0
    device = torch.device(args.device)
    start = time.perf_counter()
    checks = run_checks(args, device)
    print(format_table(checks))
    print(f"{time.perf_counter() - start:.0f} s; torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""))
    return exit_code(checks)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
