"""Llama-3-8B-shaped QLoRA on one GPU, from random weights: our code against transformers + peft +
bitsandbytes on the same machine and the very same NF4 bytes.

    python bench/bench_gpu.py                              # both parts, both sides, 8B shape
    python bench/bench_gpu.py --parts recipe --steps 20    # only the llama3-8b-t4 recipe
    python bench/bench_gpu.py --shape tiny --device cpu --optim adamw --steps 2 --seq-len 64 \\
        --recipe-seq-len 128                               # the script checking itself on a CPU

Nothing is downloaded. The weights are random (normal, std 0.02, as transformers initialises),
drawn on the device one linear at a time and quantized there, so the full-precision model never
exists anywhere. The batches are random token ids with every position a target.

  weights   4-bit weights: our model built directly in NF4; the memory its weights take on the
            device (target < 6 GB for 8B), then forward + backward tokens/s at --seq-len (512),
            batch 2, with LoRA r16 on the seven targets (the frozen NF4 base is what backward
            runs through), no gradient checkpointing.
  recipe    the llama3-8b-t4 training recipe for --steps steps: micro-batch 2 at
            --recipe-seq-len (2048), gradient checkpointing, LoRA r16 alpha 16 dropout 0 on the
            seven targets, AdamW 8-bit with weight decay 0.01, lr 2e-4, bf16 autocast where the
            GPU has it, else fp16 with a GradScaler; peak memory (target < 10 GB) and tokens/s.

The reference gets the same NF4 bytes: a first child process builds our model and saves it as a
pre-quantized bitsandbytes folder (model/checkpoint/save.py) in --workdir, which transformers loads with
bitsandbytes; peft adds the same LoRA, bitsandbytes' AdamW8bit is the same optimizer, and
transformers' own gradient checkpointing is switched on. Every measurement runs in a child
process of its own, one at a time, so each peak counts only that side. tokens/s is the median
over the timed steps after --warmup untimed ones; weights GB is torch.cuda.memory_allocated once
the model is built, peak GB is torch.cuda.max_memory_allocated over the steps (on a CPU the
script checks itself and reports no memory).
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import run_child, without_flags  # noqa: E402

from lora.inject import DEFAULT_TARGETS as TARGETS, LoRAConfig  # noqa: E402
LORA = LoRAConfig()     # the seed's recipe: r 16, alpha 16, dropout 0 on all seven linears
SIDES = ("ours", "transformers")
PARTS = ("weights", "recipe")
TINY = {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
GB = 1e9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama3-8b", choices=("llama3-8b", "tiny"),
                   help="llama3-8b: Meta-Llama-3-8B's config; tiny: a 2-layer model for checking "
                        "the script on a CPU (default: llama3-8b)")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--parts", default="weights,recipe",
                   help="comma-separated, from: weights, recipe (default: both)")
    p.add_argument("--sides", default="ours,transformers",
                   help="comma-separated, from: ours, transformers (default: both)")
    p.add_argument("--seq-len", type=int, default=512, help="sequence length of the weights part (default: 512)")
    p.add_argument("--recipe-seq-len", type=int, default=2048,
                   help="sequence length of the recipe part (default: 2048)")
    p.add_argument("--batch-size", type=int, default=2, help="micro-batch, both parts (default: 2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each part (default: 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    p.add_argument("--optim", default="adamw8bit", choices=("adamw8bit", "adamw"),
                   help="the recipe's optimizer (default: adamw8bit, bitsandbytes; adamw where "
                        "bitsandbytes has no 8-bit optimizer for the device)")
    p.add_argument("--seed", type=int, default=3407, help="seed of the weights and batches (default: 3407)")
    p.add_argument("--workdir", default="/tmp/llamacare-bench-gpu",
                   help="where the shared NF4 folder is written (default: /tmp/llamacare-bench-gpu)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE as JSON")
    p.add_argument("--child", default=None, help="internal: prepare, or SIDE:PART; prints one JSON line")
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    args.sides = [x for x in args.sides.split(",") if x]
    if not set(args.parts) <= set(PARTS) or not set(args.sides) <= set(SIDES):
        p.error(f"--parts takes {', '.join(PARTS)}; --sides takes {', '.join(SIDES)}")
    if min(args.steps, args.batch_size, args.seq_len, args.recipe_seq_len) < 1 or args.warmup < 0:
        p.error("--steps, --batch-size and the sequence lengths must be at least 1, --warmup at least 0")
    return args


def hf_config(shape: str) -> dict:
    if shape == "tiny":
        return dict(TINY)
    from tools.memory import BUILTIN_CONFIGS
    return dict(BUILTIN_CONFIGS["meta-llama/Meta-Llama-3-8B"])


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs (T4); fp32 on a CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None


# ----------------------------------------------------------------------------- building ours
def build_ours_nf4(args, device: torch.device):
    """Our Llama with every linear of the blocks in NF4 from random weights (tools/gpu_check.py)."""
    from model.config import LlamaConfig
    from tools.gpu_check import random_nf4_llama
    config = LlamaConfig.from_hf(hf_config(args.shape), source=args.shape)
    return random_nf4_llama(config, compute_dtype(device), device, args.seed)


def add_lora_ours(model, seed: int):
    from lora import inject
    torch.manual_seed(seed)
    inject(model, LORA)
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- building theirs
def build_transformers(folder: Path, device: torch.device, grad_checkpointing: bool, seed: int):
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    # The folder's config.json carries the bitsandbytes NF4 quantization_config (model/checkpoint/save.py).
    model = LlamaForCausalLM.from_pretrained(folder, dtype=compute_dtype(device), device_map={"": device})
    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=LORA.dropout, bias="none",
                                             target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    return model, [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- the children
def child_prepare(args, device: torch.device) -> dict:
    """Builds our NF4 model once and saves it where the transformers children read it."""
    from model.checkpoint.save import save_checkpoint
    folder = Path(args.workdir) / f"{args.shape}-seed{args.seed}"
    if (folder / "config.json").is_file():
        return {"folder": str(folder), "reused": True}
    model = build_ours_nf4(args, device)
    start = time.perf_counter()
    save_checkpoint(model, folder, dtype=compute_dtype(device))
    return {"folder": str(folder), "reused": False, "save_s": time.perf_counter() - start}


def child_measure(args, device: torch.device, side: str, part: str) -> dict:
    recipe = part == "recipe"
    seq_len = args.recipe_seq_len if recipe else args.seq_len
    dtype = compute_dtype(device)
    start = time.perf_counter()
    if side == "ours":
        model = build_ours_nf4(args, device)
        sync(device)
        weights_gb = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None
        params = add_lora_ours(model, args.seed)
        model.gradient_checkpointing = recipe
        from model.loss import target_nll

        def loss_of(ids):
            nll, n = target_nll(model, ids, ids)
            return nll / n
    else:
        folder = Path(args.workdir) / f"{args.shape}-seed{args.seed}"
        model, params = build_transformers(folder, device, recipe, args.seed)
        sync(device)
        weights_gb = torch.cuda.memory_allocated(device) / GB if device.type == "cuda" else None

        def loss_of(ids):
            return model(input_ids=ids, labels=ids, use_cache=False).loss
    build_s = time.perf_counter() - start
    model.train()
    if device.type == "cuda":  # the peak of the steps, not of building or loading
        torch.cuda.reset_peak_memory_stats(device)

    if recipe and args.optim == "adamw8bit":
        import bitsandbytes as bnb
        optimizer = bnb.optim.AdamW8bit(params, lr=2e-4, weight_decay=0.01)
    else:
        optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    vocab = hf_config(args.shape)["vocab_size"]
    gen = torch.Generator().manual_seed(args.seed)
    tok_s, losses = [], []
    for i in range(args.warmup + args.steps):
        ids = torch.randint(0, vocab, (args.batch_size, seq_len), generator=gen).to(device)  # (B, T)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            loss = loss_of(ids)
        scaler.scale(loss).backward()
        if recipe:  # the whole optimizer step; the weights part times forward + backward only
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            tok_s.append(ids.numel() / seconds)
    return {"side": side, "part": part, "seq_len": seq_len, "build_s": build_s,
            "weights_gb": weights_gb, "peak_gb": max_memory(device),
            "tok_s_median": statistics.median(tok_s), "tok_s": tok_s, "losses": losses,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if args.child:
        result = child_prepare(args, device) if args.child == "prepare" else \
            child_measure(args, device, *args.child.split(":"))
        print(json.dumps(result))
        return

    base = without_flags(argv, ("--child", "--json"))
    results = []
    if "transformers" in args.sides:
        print("... prepare", flush=True)
        prep = run_child(__file__, base, "prepare")
        print(f"shared NF4 folder: {prep['folder']}" + (" (reused)" if prep["reused"] else
                                                         f" (written in {prep['save_s']:.0f} s)"))
    for part in args.parts:
        for side in args.sides:
            print(f"... {side}:{part}", flush=True)
            r = run_child(__file__, base, f"{side}:{part}")
            print(f"{side} {part}: {r['tok_s_median']:.0f} tok/s, weights {fmt(r['weights_gb'])} GB, "
                  f"peak {fmt(r['peak_gb'])} GB, losses {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}",
                  flush=True)
            results.append(r)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    name = results[0]["device_name"] if results else args.device
    print(f"\n## QLoRA on one GPU: {args.shape}-shaped, random NF4 weights, {name}\n")
    print(f"`{command}`\n")
    print(f"torch {torch.__version__}, compute {str(compute_dtype(device)).removeprefix('torch.')}, "
          f"micro-batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up\n")
    print("| part | side | seq len | weights GB | peak GB | tokens/s median (min-max) | first / last loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['part']} | {r['side']} | {r['seq_len']} | {fmt(r['weights_gb'])} | {fmt(r['peak_gb'])} "
              f"| {r['tok_s_median']:.0f} ({min(r['tok_s']):.0f}-{max(r['tok_s']):.0f}) "
              f"| {r['losses'][0]:.3f} / {r['losses'][-1]:.3f} |")
    print()
    by = {(r["part"], r["side"]): r for r in results}
    for part in args.parts:
        if (part, "ours") in by and (part, "transformers") in by:
            ours, theirs = by[(part, "ours")], by[(part, "transformers")]
            print(f"{part}: ours / transformers tokens/s {ours['tok_s_median'] / theirs['tok_s_median']:.2f}x")
    targets = {"weights": ("weights_gb", 6.0), "recipe": ("peak_gb", 10.0)}
    for part, (key, limit) in targets.items():
        r = by.get((part, "ours"))
        if r and r[key] is not None:
            print(f"{part}: ours {key.removesuffix('_gb')} {r[key]:.2f} GB (target < {limit:g} GB: "
                  f"{'met' if r[key] < limit else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "results": results}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
