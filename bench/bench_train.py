"""Training speed and memory of our LoRA step against transformers + peft.

    python bench/bench_train.py                       # peak RSS, then 2 warm-up + 8 timed steps
    python bench/bench_train.py --steps 2 --warmup 1 --rss-steps 1 --rss-repeats 1 --max-len 128
                                                      # the short version: 2-4 minutes
    python bench/bench_train.py --json train.json

The same work on both sides:
  - the embedded SmolLM2-135M-Instruct, float32 (--dtype), on the CPU, no gradient checkpointing
  - LoRA r=16, alpha=16, dropout 0 on q, k, v, o, gate, up, down; everything else frozen; both
    start from the same A matrices (drawn here from the seed) and B = 0
  - the same padded batches: the bundled rows, chat template, --max-len, micro-batch
    --batch-size, in the order a group-by-length Batcher gives them (the longest batch first)
  - the same loss, the mean over target tokens (transformers gets labels with -100 on the prompt
    and padding), and torch.optim.AdamW with the same settings
  - one step = forward + backward + optimizer step + zero_grad

How the two numbers are kept honest:
  tokens/s   both models live in this process and take turns step by step (ours on batch i,
             transformers on batch i, ours on batch i+1, ...), so a busy spell on a shared
             machine hits both alike. tokens = input tokens of the batch, padding included (as
             train.py counts them). Reported: the median over timed steps and the median of the
             per-step ratio (both sides ran the very same batch).
  peak RSS   a process's peak RSS counts everything it ever held, so it cannot be measured with
             both models in one process. Each implementation runs again alone in a child
             process (this script with --child), which imports only what that implementation
             needs, loads the model, trains the first --rss-steps batches (the longest one
             among them) and reports resource.getrusage(RUSAGE_SELF).ru_maxrss. The same child
             can peak a few hundred MiB apart from run to run (what the allocator keeps after
             backward varies), so --rss-repeats children per side take turns; medians reported.
  same work  the losses of both sides are printed step by step; in float32 they agree to about
             1e-6 (in bfloat16 each side rounds differently, so about 1e-2).
  floor      a third side takes its turn on every batch: only the matmuls and attention that
             any exact implementation of the step must run (the frozen linears forward and
             their input gradients, attention forward and backward, the vocabulary projection
             at target positions; see build_floor). floor / transformers is the most that any
             implementation could gain over transformers + peft on this machine.
"""

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name, run_child, without_flags  # noqa: E402

from lora.inject import DEFAULT_TARGETS as TARGETS, LoRAConfig  # noqa: E402
IMPLS = ("ours", "transformers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", default="sample",
                   help="training rows, as train.py's --data (default: sample, the bundled rows)")
    p.add_argument("--max-len", type=int, default=384, help="longest example in tokens (default: 384)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per micro-batch (default: 4)")
    p.add_argument("--steps", type=int, default=8, help="timed steps of each implementation (default: 8)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed steps of each implementation first (default: 2)")
    p.add_argument("--rss-steps", type=int, default=2,
                   help="steps each peak-RSS child process trains (default: 2: the longest batch "
                        "comes first, and from step 2 on AdamW's state is held as well)")
    p.add_argument("--rss-repeats", type=int, default=2,
                   help="child processes per implementation for peak RSS, taking turns; the "
                        "median is reported (default: 2)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--lora-r", type=int, default=LoRAConfig.r, help=f"LoRA rank (default: {LoRAConfig.r})")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha (default: 16)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="the frozen base weights and their compute, on both sides; the LoRA "
                        "matrices stay float32 (default: float32)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--seed", type=int, default=3407, help="seed of the batch order and LoRA init (default: 3407)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own choice, left unchanged)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write every number to FILE as JSON")
    p.add_argument("--child", choices=IMPLS, default=None,
                   help="internal: run only this implementation for --rss-steps steps and print "
                        "its memory as one JSON line (used for the peak-RSS numbers)")
    args = p.parse_args(argv)
    if min(args.steps, args.rss_steps, args.rss_repeats, args.batch_size) < 1 or args.warmup < 0:
        p.error("--steps, --rss-steps, --rss-repeats and --batch-size must be at least 1, "
                "--warmup at least 0")
    return args


# ----------------------------------------------------------------------------- shared inputs
def model_folder(args) -> Path:
    from model.checkpoint.gguf import default_model_dir
    return Path(args.model) if args.model else default_model_dir()


def make_batches(args, folder, n: int) -> list[dict]:
    """The first n training micro-batches, padded: {"input_ids", "labels"}, each (B, T)."""
    from data import Batcher, build_examples, load_rows, pad_id_for
    from model import load_tokenizer
    tokenizer = load_tokenizer(folder)
    rows, _ = load_rows(args.data)
    examples, _ = build_examples(rows, tokenizer, "chat", args.max_len, progress=False)
    batcher = Batcher(examples, args.batch_size, pad_id_for(tokenizer), seed=args.seed,
                      group_by_length=True)
    return [next(batcher) for _ in range(n)]


def initial_lora_A(name: str, r: int, in_features: int, seed: int) -> torch.Tensor:
    """A (r, in) start for one module, the same in every process: uniform in +-1/sqrt(in), the
    bound kaiming_uniform_(a=sqrt(5)) gives, from a generator seeded by the seed and the name."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    bound = 1.0 / in_features ** 0.5
    return (torch.rand(r, in_features, generator=gen) * 2 - 1) * bound


def rss_mb() -> float:
    """The current resident set size, in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- the two sides
def build_ours(folder, args):
    """Our model with LoRA; returns step(batch) -> loss."""
    from lora import LoRAConfig, inject, lora_modules
    from model import load_model
    from model.loss import target_nll
    model = load_model(folder, dtype=args.dtype, quiet=True)
    inject(model, LoRAConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=0.0, targets=TARGETS))
    with torch.no_grad():
        for name, m in lora_modules(model).items():  # "layers.0.self_attn.q_proj"
            m.lora_A.copy_(initial_lora_A(name, args.lora_r, m.in_features, args.seed))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    def step(batch) -> float:
        nll, n_targets = target_nll(model, batch["input_ids"], batch["labels"])
        loss = nll / n_targets  # mean over target tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, sum(p.numel() for p in params)


def build_transformers(folder, args):
    """transformers' LlamaForCausalLM with a peft LoRA; returns step(batch) -> loss."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes, not results
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                        target_modules=list(TARGETS), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, m in model.named_modules():
            if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
                # "base_model.model.model.layers.0.self_attn.q_proj" -> "layers.0.self_attn.q_proj"
                ours_name = name.removeprefix("base_model.model.model.")
                weight = m.lora_A["default"].weight  # (r, in)
                weight.copy_(initial_lora_A(ours_name, args.lora_r, weight.shape[1], args.seed))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    def step(batch) -> float:
        # labels hold -100 on prompt and padding; the model shifts them and averages the rest
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item()

    return step, sum(p.numel() for p in params)


def build_floor(folder, args):
    """The matmuls and attention that any exact implementation of this step must run; returns
    step(batch) -> nan (no loss: nothing trains). It is a lower bound on the step time, not a way to train:

      - every frozen linear of the blocks: the forward product and the gradient of its input
        (a frozen weight needs no gradient of its own; the first block's q, k, v need no input
        gradient either, since nothing below them trains)
      - attention forward and backward in every block, at the batch's shape
      - the vocabulary projection and its input gradient, at the target positions only

    It leaves out everything else: the LoRA products, norms, rotary embeddings, SwiGLU's
    elementwise work, the softmax of the loss and the optimizer."""
    from model import load_model
    from model.loss import count_targets
    model = load_model(folder, dtype=args.dtype, quiet=True)
    cfg = model.config
    first_qkv = {f"layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")}
    linears = [(m.weight, name not in first_qkv) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.startswith("layers.")]
    vocab_weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    dtype = vocab_weight.dtype

    def step(batch) -> float:
        B, T = batch["input_ids"].shape
        n_targets = count_targets(batch["labels"])

        def filled(*shape, grad=False):  # the values do not matter, only the shapes
            return torch.full(shape, 0.01, dtype=dtype, requires_grad=grad)

        with torch.no_grad():
            x = {w.shape[1]: filled(B * T, w.shape[1]) for w, _ in linears}
            g = {w.shape[0]: filled(B * T, w.shape[0]) for w, _ in linears}
            for w, input_grad in linears:
                x[w.shape[1]] @ w.t()                           # (B*T, out)
                if input_grad:
                    g[w.shape[0]] @ w                           # (B*T, in)
            filled(n_targets, cfg.dim) @ vocab_weight.t()       # (N, vocab)
            filled(n_targets, cfg.vocab_size) @ vocab_weight    # (N, dim)
        for _ in range(cfg.n_layers):
            q = filled(B, cfg.n_heads, T, cfg.head_dim, grad=True)
            k = filled(B, cfg.n_kv_heads, T, cfg.head_dim, grad=True)
            v = filled(B, cfg.n_kv_heads, T, cfg.head_dim, grad=True)
            y = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=cfg.n_kv_heads != cfg.n_heads)
            y.backward(torch.full_like(y, 0.01))
        return float("nan")

    return step


BUILDERS = {"ours": build_ours, "transformers": build_transformers}
LABELS = {"ours": "ours (model + lora)", "transformers": "transformers + peft",
          "floor": "floor: base matmuls + attention only"}


# ----------------------------------------------------------------------------- child: peak RSS
def child(args):
    """Runs one implementation alone and prints its memory as one JSON line."""
    folder = model_folder(args)
    batches = make_batches(args, folder, args.rss_steps)
    if args.child == "transformers":
        import peft  # noqa: F401  (imported here so "after imports" includes them)
        import transformers  # noqa: F401
    after_import = rss_mb()
    step, _ = BUILDERS[args.child](folder, args)
    after_load = rss_mb()  # weights read through a memory map count only once touched
    losses, seconds = [], []
    for batch in batches:
        start = time.perf_counter()
        losses.append(step(batch))
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"impl": args.child, "rss_after_import_mb": after_import,
                      "rss_after_load_mb": after_load, "peak_rss_mb": peak_rss_mb(),
                      "longest_batch": list(batches[0]["input_ids"].shape),
                      "losses": losses, "seconds": seconds}))


def measure_rss(args, argv) -> dict:
    """{impl: [child report, ...]}: --rss-repeats children per side, taking turns. The same run
    can peak a few hundred MiB apart (glibc's malloc moves its mmap threshold as big blocks are
    freed, so how much freed memory it keeps varies), hence repeats and a median."""
    results = {impl: [] for impl in IMPLS}
    for r in range(args.rss_repeats):
        for impl in IMPLS:
            print(f"peak RSS {r + 1}/{args.rss_repeats}: running {impl} alone in a child "
                  "process ...", flush=True)
            results[impl].append(run_child(__file__, argv, impl))
    return results


def rss_summary(reports: list[dict]) -> dict:
    peaks = [r["peak_rss_mb"] for r in reports]
    return {"peak_median": statistics.median(peaks), "peak_min": min(peaks), "peak_max": max(peaks),
            "after_imports": statistics.median(r["rss_after_import_mb"] for r in reports)}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)

    threads = torch.get_num_threads()
    rss = {} if args.no_rss else measure_rss(args, without_flags(argv, ("--json", "--child"), ("--no-rss",)))

    folder = model_folder(args)
    batches = make_batches(args, folder, args.warmup + args.steps)
    steps = {}
    trainable = {}
    for impl in IMPLS:
        torch.manual_seed(args.seed)
        steps[impl], trainable[impl] = BUILDERS[impl](folder, args)
    steps["floor"] = build_floor(folder, args)
    timed_sides = (*IMPLS, "floor")
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    print(f"torch threads: {threads}; trainable parameters: "
          + ", ".join(f"{impl} {n:,}" for impl, n in trainable.items())
          + f"; batches (B, T): {shapes}", flush=True)

    tok_s = {impl: [] for impl in timed_sides}
    losses = {impl: [] for impl in timed_sides}
    for i, batch in enumerate(batches):
        tokens = batch["input_ids"].numel()
        for impl in timed_sides:  # ours, transformers, floor, ours, transformers, ...
            start = time.perf_counter()
            losses[impl].append(steps[impl](batch))
            seconds = time.perf_counter() - start
            if i >= args.warmup:
                tok_s[impl].append(tokens / seconds)
        timed = "timed" if i >= args.warmup else "warm-up"
        print(f"step {i + 1} ({timed}, {tokens} tokens): " + ", ".join(
            f"{impl} loss {losses[impl][-1]:.5f}" + (f" {tok_s[impl][-1]:.0f} tok/s" if i >= args.warmup else "")
            for impl in IMPLS)
            + (f", floor {tok_s['floor'][-1]:.0f} tok/s" if i >= args.warmup else ""), flush=True)

    ratios = [a / b for a, b in zip(tok_s["ours"], tok_s["transformers"])]
    med = {impl: statistics.median(v) for impl, v in tok_s.items()}
    ratio = med["ours"] / med["transformers"]
    ceiling = med["floor"] / med["transformers"]
    loss_gap = max(abs(a - b) for a, b in zip(losses["ours"], losses["transformers"]))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    print(f"\n## Training step: LoRA on SmolLM2-135M-Instruct, {args.dtype}, CPU\n")
    print(f"`{command}`\n")
    print(f"micro-batch {args.batch_size}, max-len {args.max_len}, LoRA r={args.lora_r} "
          f"alpha={args.lora_alpha:g} on 7 targets, AdamW; {args.steps} timed steps per "
          f"implementation after {args.warmup} warm-up, alternating step by step; "
          f"torch {torch.__version__}, {threads} threads, {cpu_name()}\n")
    print("| implementation | tokens/s median (min-max) | peak RSS MiB median (min-max) "
          "| RSS after imports MiB "
          f"| loss after step {len(batches)} |")
    print("|---|---:|---:|---:|---:|")
    for impl in timed_sides:
        v = tok_s[impl]
        mem = rss_summary(rss[impl]) if rss and impl in rss else None
        peak = f"{mem['peak_median']:.0f} ({mem['peak_min']:.0f}-{mem['peak_max']:.0f})" if mem else "-"
        imported = f"{mem['after_imports']:.0f}" if mem else "-"
        loss = "-" if impl == "floor" else f"{losses[impl][-1]:.5f}"
        print(f"| {LABELS[impl]} | {med[impl]:.0f} ({min(v):.0f}-{max(v):.0f}) | {peak} | {imported} "
              f"| {loss} |")
    print()
    verdict = "met" if ratio >= 1.5 else "NOT met"
    print(f"ours / transformers + peft: tokens/s {ratio:.2f}x (median of per-step ratios "
          f"{statistics.median(ratios):.2f}x; target >= 1.5x: {verdict})")
    print(f"floor / transformers + peft: {ceiling:.2f}x, the most any implementation of this exact "
          f"step could gain here (ours runs at {med['ours'] / med['floor']:.0%} of the floor's speed, "
          f"transformers + peft at {med['transformers'] / med['floor']:.0%})")
    if rss:
        ours_mem, hf_mem = rss_summary(rss["ours"]), rss_summary(rss["transformers"])
        print(f"peak RSS: ours {ours_mem['peak_median']:.0f} MiB vs transformers + peft "
              f"{hf_mem['peak_median']:.0f} MiB, {ours_mem['peak_median'] / hf_mem['peak_median']:.2f}x "
              f"(medians of {args.rss_repeats} child process(es) per side, each running one side "
              f"alone for {args.rss_steps} step(s), longest batch "
              f"{tuple(rss['ours'][0]['longest_batch'])})")
    else:
        print("peak RSS: skipped (--no-rss)")
    print(f"same work: the largest loss difference over {len(batches)} steps is {loss_gap:.2e}")

    if args.json:
        result = {"command": command, "model": str(folder), "threads": threads,
                  "torch": torch.__version__, "cpu": cpu_name(), "batch_shapes": shapes,
                  "tokens_per_s": tok_s, "median_tokens_per_s": med,
                  "ratio_of_medians": ratio, "per_step_ratios": ratios,
                  "floor_over_transformers": ceiling,
                  "losses": {impl: losses[impl] for impl in IMPLS},
                  "max_loss_difference": loss_gap, "rss": rss, "trainable_parameters": trainable,
                  "args": vars(args)}
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
