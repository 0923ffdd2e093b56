"""One process against torchrun's DDP and FSDP on the same global batch: tokens/s, wall time,
peak memory of every rank, and whether the adapters agree.

    python bench/bench_distributed.py                              # CPU: 2 warm-up + 6 timed steps
    python bench/bench_distributed.py --steps 3 --warmup 1 --max-len 128      # the short version
    python bench/bench_distributed.py --gpu --model DIR --nproc 4 --batch-size 4 \\
        --train-args="--grad-checkpointing"                       # N GPUs (see --gpu below)

What runs: each variant is a fresh train.py run in its own process(es), with a fresh temporary
--out, on the same global batch of N x B examples (N = --nproc, B = --batch-size per rank):

  one            python train.py --batch-size N*B            T threads (CPU) or cuda:0 (--gpu)
  ddp            torchrun --standalone --nproc_per_node N train.py --parallel ddp --batch-size B,
                 T / N threads per rank (gloo on CPU, nccl with --gpu)
  fsdp           the same with --parallel fsdp
  fsdp-offload   (--gpu only) fsdp with --cpu-offload

T is --threads (default N), given to every process as OMP_NUM_THREADS, so that the one process
and the N ranks use the same cores. All variants get --max-steps warmup + steps, --eval-every 0
(train.py still evaluates once after the last step), --save-every 0 (one save at the end),
--lora-dropout 0 and train.py's default seed: the same rows in the same steps (data/batches.py
gives each rank its share of every global batch), so the same work. With --repeats R the
variants take turns R times (one, ddp, fsdp, one, ...), so that a busy spell on a shared machine
hits all alike.

How the numbers are taken:
  tokens/s    from the run's metrics.jsonl: train.py's per-step tokens_per_s, the target tokens of
              the whole global step over all ranks / the step's seconds on rank 0 (every step
              ends in collectives, so the ranks finish it together). The first --warmup steps
              are left out; the median over the timed steps of all repeats is reported.
  wall        seconds of the whole command, launch to exit, measured here: start-up (torchrun's
              too), imports, loading and quantizing, the steps, the final evaluation and save.
              The model files are read once before the first run, so that no variant pays for
              a cold disk.
  peak RSS    every process (the one process, or each rank) runs train.main inside this script
              (--child), which, when train.main returns or raises, reads VmHWM (the high-water
              mark of resident memory) from /proc/self/status and writes it to a file named by
              the rank (env RANK). VmHWM belongs to the process's own address space. getrusage's
              ru_maxrss is not used: Linux carries the parent's high-water mark into a child
              across fork + exec, so every rank would report at least the RSS of torchrun's
              agent (or of this script) at launch (a child of a 400 MiB Python process reports
              ru_maxrss 413 MiB and VmHWM 13 MiB). Pages of the memory-mapped checkpoint count in
              every rank that touched them, though the page cache holds them once, so the sum
              over ranks can overstate what the machine needed. torchrun's agent (one more Python
              process) is not counted.
  GPU memory  (--gpu) torch.cuda.max_memory_allocated and max_memory_reserved of each rank's
              device, read by the same --child wrapper at exit: the tensors PyTorch's allocator
              handed out, and what it held from the driver. The CUDA context and NCCL's buffers
              are outside both.
  same work   adapter_model.safetensors of every variant against the first variant's (normally
              one): the largest absolute difference over all tensors, and how many elements
              differ by more than 1e-5. Every rank divides its summed loss by the target count of
              the whole global step, so the gradients agree to float32 round-off. AdamW can still
              move an element whose gradient is near zero by a fraction of a learning-rate step
              more or less (it divides the gradient by its own running size), so a handful of
              elements out of millions may differ by a few 1e-5 after a few steps. The per-step
              losses are compared too (metrics.jsonl rounds them to 5 decimals), and the per-step
              target tokens must be identical.

--gpu: the same comparison on N GPUs with nccl, on --model (e.g. a Llama-3-8B folder; default
the embedded model), --dtype auto unless given. It refuses with one line when fewer than 2 GPUs
(or fewer than --nproc) are visible. Its figures have not been taken on the machine this script
was written on (no GPU there): the GPU path is written to the same pattern as the CPU one, which
was run, but has not itself been run. The one-GPU variant takes the whole global batch
(--nproc x --batch-size) on one GPU; a variant that fails (out of GPU memory, say) is reported as
failed in its row and the others still run. In bfloat16 the adapters differ more than in float32
(each split of the batch rounds differently).
"""

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

from bench.common import cpu_name  # noqa: E402

VARIANTS = ("one", "ddp", "fsdp", "fsdp-offload")
CPU_VARIANTS = ("one", "ddp", "fsdp")
LABELS = {"one": "one process", "ddp": "torchrun, ddp", "fsdp": "torchrun, fsdp",
          "fsdp-offload": "torchrun, fsdp --cpu-offload"}
REPORT_NAME = "rank{rank}.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder or hub id, as train.py's --model (default: the embedded "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--quantize", default="nf4", choices=("none", "nf4"),
                   help="the base weights: nf4 (QLoRA, 4-bit) or none (--dtype) (default: nf4)")
    p.add_argument("--dtype", default=None,
                   help="train.py's --dtype (default: float32 on CPU; auto with --gpu, i.e. "
                        "bfloat16 where the GPU has it)")
    p.add_argument("--data", default="sample",
                   help="training rows, as train.py's --data (default: sample, the bundled rows)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per run (default: 6)")
    p.add_argument("--warmup", type=int, default=2,
                   help="steps before them, run but left out of tokens/s (default: 2)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="examples per rank per step; the one process gets --nproc times as many, "
                        "the same global batch (default: 2)")
    p.add_argument("--max-len", type=int, default=256, help="longest example in tokens (default: 256)")
    p.add_argument("--nproc", type=int, default=2,
                   help="ranks of the torchrun variants (GPUs with --gpu) (default: 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads in all: the one process gets this many, each rank this / "
                        "--nproc, as OMP_NUM_THREADS (default: --nproc; with --gpu, fsdp-offload "
                        "runs AdamW on the CPU, so more threads help it there)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of one, ddp, fsdp and (with --gpu) fsdp-offload, "
                        "run in this order; the first is the reference of the ratios (default: "
                        "one,ddp,fsdp on CPU, all four with --gpu)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every variant, taking turns; medians over all (default: 1)")
    p.add_argument("--train-args", default="",
                   help="more train.py flags for every variant, as one quoted string, e.g. "
                        "--train-args=\"--grad-checkpointing --lora-r 64\" (with '=', since the value "
                        "starts with --) (default: none)")
    p.add_argument("--gpu", action="store_true",
                   help="compare on GPUs with nccl: one GPU against --nproc GPUs; needs at least 2 "
                        "visible GPUs (not run on the machine this was written on)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write every number (per step, per rank, per run) to FILE as JSON")
    p.add_argument("--keep", action="store_true",
                   help="keep every run's temporary folder (run folder, logs, rank reports) and "
                        "print where they are")
    p.add_argument("--child", default=None, metavar="DIR",
                   help="internal: run train.main with the arguments after '--' and write this "
                        "process's peak memory to DIR/rank<RANK>.json at exit (how every rank is "
                        "measured)")
    args = p.parse_args(argv)
    if args.child:
        return args
    if min(args.steps, args.batch_size, args.max_len, args.repeats) < 1 or args.warmup < 0:
        p.error("--steps, --batch-size, --max-len and --repeats must be at least 1, --warmup at least 0")
    if args.nproc < 2:
        p.error(f"--nproc {args.nproc}: the torchrun variants need at least 2 ranks")
    allowed = VARIANTS if args.gpu else CPU_VARIANTS
    args.variants = args.variants.split(",") if args.variants else list(allowed)
    for v in args.variants:
        if v not in allowed:
            p.error(f"--variants: '{v}' is not one of {', '.join(allowed)}"
                    + (" (fsdp-offload only with --gpu)" if v == "fsdp-offload" else ""))
    if len(set(args.variants)) != len(args.variants):
        p.error("--variants: each variant once (use --repeats to run them again)")
    args.threads = args.threads or args.nproc
    if args.threads < args.nproc:
        p.error(f"--threads {args.threads}: at least one per rank (--nproc {args.nproc})")
    args.dtype = args.dtype or ("auto" if args.gpu else "float32")
    return args


# ----------------------------------------------------------------------------- child: one process
def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM of its own address space (see the module
    docstring for why not ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # "VmHWM:  123456 kB"
    except OSError:
        pass
    import resource  # no /proc: the best there is
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak() -> dict | None:
    """Peak GPU memory of this process's device, when it used one."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    device = torch.cuda.current_device()
    return {"device": device, "max_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "max_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20}


def child(report_dir: str, train_argv: list[str]):
    """train.main(train_argv) in this process, then its peak memory to report_dir, whatever the end."""
    rank = int(os.environ.get("RANK", "0"))
    code, message = 1, None
    try:
        import train
        from model.errors import UserError
        try:
            train.main(train_argv)
            code = 0
        except UserError as e:  # what train.py's __main__ does with it
            message = f"error: {e}"
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            message = None if isinstance(e.code, int) or e.code is None else str(e.code)
    finally:
        report = {"rank": rank, "pid": os.getpid(), "exit": code, "peak_rss_mb": peak_rss_mb(),
                  "gpu": gpu_peak()}
        Path(report_dir, REPORT_NAME.format(rank=rank)).write_text(json.dumps(report))
    if message:
        print(message, file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------- one run of a variant
def train_flags(args, out: Path) -> list[str]:
    """train.py flags every variant shares."""
    flags = ["--data", args.data, "--max-len", str(args.max_len), "--max-steps", str(args.warmup + args.steps),
             "--eval-every", "0", "--save-every", "0", "--lora-dropout", "0", "--quantize", args.quantize,
             "--dtype", args.dtype, "--out", str(out)]
    if args.model:
        flags += ["--model", args.model]
    return flags + shlex.split(args.train_args)


def commands(variant: str, args, out: Path, report_dir: Path) -> tuple[list[str], dict, str]:
    """(argv, environment, the same command as a person would type it with train.py)."""
    n = args.nproc
    wrapper = [str(Path(__file__).resolve()), "--child", str(report_dir), "--"]
    flags = train_flags(args, out)
    if variant == "one":
        threads = args.threads
        launcher = [sys.executable]
        flags += ["--batch-size", str(n * args.batch_size), "--device", "cuda:0" if args.gpu else "cpu"]
        shown = "python"
    else:
        threads = args.threads // n
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
        flags += ["--parallel", variant.split("-")[0], "--batch-size", str(args.batch_size),
                  "--device", "cuda" if args.gpu else "cpu"]
        if variant == "fsdp-offload":
            flags.append("--cpu-offload")
        shown = f"torchrun --standalone --nproc_per_node {n}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    text = f"OMP_NUM_THREADS={threads} {shown} train.py " + " ".join(shlex.quote(f) for f in flags)
    return [*launcher, *wrapper, *flags], env, text


def run_variant(variant: str, args, repeat: int) -> tuple[dict, dict | None]:
    """Runs one variant once: (its numbers, its adapter tensors or None when it failed)."""
    from safetensors.torch import load_file
    folder = Path(tempfile.mkdtemp(prefix=f"bench_distributed_{variant}_"))
    out, report_dir = folder / "run", folder / "ranks"
    report_dir.mkdir()
    argv, env, text = commands(variant, args, out, report_dir)
    print(f"run {repeat + 1}/{args.repeats}, {variant}: {text}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (folder / "log.txt").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    ranks = sorted((json.loads(p.read_text()) for p in report_dir.glob("rank*.json")), key=lambda r: r["rank"])
    steps = []
    if (out / "metrics.jsonl").is_file():
        steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [s for s in steps if "tokens_per_s" in s]
    result = {"variant": variant, "repeat": repeat, "command": text, "exit": done.returncode,
              "wall_s": wall, "ranks": ranks,
              "tokens_per_s": [s["tokens_per_s"] for s in steps if s["step"] > args.warmup],
              "warmup_tokens_per_s": [s["tokens_per_s"] for s in steps if s["step"] <= args.warmup],
              "losses": [s["loss"] for s in steps], "target_tokens": [s["target_tokens"] for s in steps],
              "folder": str(folder) if args.keep else None}
    adapter = None
    if done.returncode != 0 or len(steps) != args.warmup + args.steps:
        tail = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["(no output)"]
        result["error"] = tail[-1][:300]
        print(f"  failed (exit {done.returncode}): {result['error']}\n  log: {folder / 'log.txt'}", flush=True)
        result["folder"] = str(folder)  # a failed run's folder is the only record of why: kept
    else:
        adapter = load_file(out / "adapter_model.safetensors")
        speeds = ", ".join(f"{t:.0f}" for t in result["tokens_per_s"])
        peaks = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in ranks)
        print(f"  {wall:.1f} s; timed tokens/s {speeds}; peak RSS MiB per rank {peaks}", flush=True)
    if not result["folder"]:
        shutil.rmtree(folder, ignore_errors=True)
    return result, adapter


# ----------------------------------------------------------------------------- summary
def summarize(runs: list[dict]) -> dict | None:
    """Medians over the successful runs of one variant; None when none succeeded."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return None
    tok = [t for r in good for t in r["tokens_per_s"]]
    by_rank = list(zip(*[[x["peak_rss_mb"] for x in r["ranks"]] for r in good]))  # (ranks, runs)
    gpu = None
    if all(x["gpu"] for r in good for x in r["ranks"]):
        gpu = {key: [statistics.median(x["gpu"][key] for x in col)
                     for col in zip(*[r["ranks"] for r in good])]
               for key in ("max_allocated_mb", "max_reserved_mb")}
    rss = [statistics.median(col) for col in by_rank]
    return {"tokens_per_s": statistics.median(tok), "min": min(tok), "max": max(tok),
            "wall_s": statistics.median(r["wall_s"] for r in good), "rss_per_rank": rss,
            "rss_sum": sum(rss), "gpu": gpu, "final_loss": good[0]["losses"][-1], "runs": len(good)}


def adapter_diff(a: dict, b: dict, over: float = 1e-5) -> tuple[float, int, int]:
    """(largest absolute difference, elements differing by more than `over`, elements) of two
    adapters' tensors; inf when they do not hold the same tensors."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf"), -1, -1
    diffs = [(a[k].float() - b[k].float()).abs() for k in a]
    return (max(float(d.max()) for d in diffs), sum(int((d > over).sum()) for d in diffs),
            sum(d.numel() for d in diffs))


def warm_page_cache(args):
    """Reads the model's files once, so that the first variant does not pay for a cold disk."""
    from model.checkpoint.load import resolve_model_dir
    folder = resolve_model_dir(args.model, quiet=True)  # the embedded model is converted here, once
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    return folder


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own, train_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parse_args(own)
    if args.child:
        return child(args.child, train_argv)
    if train_argv:
        raise SystemExit("arguments after '--' are only for --child; use --train-args=\"...\" for train.py flags")
    import torch
    if args.gpu:
        visible = torch.cuda.device_count()
        if visible < 2 or visible < args.nproc:
            raise SystemExit(f"--gpu: needs at least {max(2, args.nproc)} visible GPUs (--nproc {args.nproc}), "
                             f"PyTorch sees {visible}; run without --gpu for the CPU comparison")

    folder = warm_page_cache(args)
    runs = {v: [] for v in args.variants}
    adapters = {}
    for repeat in range(args.repeats):
        for variant in args.variants:  # one, ddp, fsdp, one, ddp, fsdp, ...
            result, adapter = run_variant(variant, args, repeat)
            runs[variant].append(result)
            if adapter is not None:
                adapters.setdefault(variant, adapter)

    n, B = args.nproc, args.batch_size
    summary = {v: summarize(runs[v]) for v in args.variants}
    ref = args.variants[0]
    ref_sum = summary[ref]
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    where = (f"{n} x {torch.cuda.get_device_name(0)}" if args.gpu
             else f"CPU ({cpu_name()}, {os.cpu_count()} cores), gloo")
    print(f"\n## Distributed training: one process vs torchrun ddp / fsdp, {args.quantize} base, {where}\n")
    print(f"`{command}`\n")
    print(f"model {folder}; global batch {n * B} ({B} per rank x {n} ranks, or {n * B} in one process), "
          f"max-len {args.max_len}, dtype {args.dtype}; {args.warmup} warm-up + {args.steps} timed steps per "
          f"run, {args.repeats} run(s) per variant taking turns; {args.threads} CPU threads per variant; "
          f"torch {torch.__version__}\n")
    gpu_cols = args.gpu
    print(f"| variant | processes x threads | tokens/s median (min-max) | tokens/s vs {ref} | wall s "
          f"| peak RSS MiB per rank | RSS sum MiB | RSS sum vs {ref} |" + (" peak GPU MiB per rank, allocated / reserved |" if gpu_cols else "")
          + " final loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu_cols else "") + "---:|")
    for v in args.variants:
        s = summary[v]
        shape = f"1 x {args.threads}" if v == "one" else f"{n} x {args.threads // n}"
        if s is None:
            error = next(r["error"] for r in runs[v] if "error" in r)
            print(f"| {LABELS[v]} | {shape} | failed: {error} |" + " |" * (7 if gpu_cols else 6))
            continue
        speed = f"{s['tokens_per_s'] / ref_sum['tokens_per_s']:.2f}x" if ref_sum else "-"
        mem = f"{s['rss_sum'] / ref_sum['rss_sum']:.2f}x" if ref_sum else "-"
        gpu = ""
        if gpu_cols:
            gpu = (" " + ", ".join(f"{a:.0f} / {r:.0f}" for a, r in zip(s["gpu"]["max_allocated_mb"],
                                                                         s["gpu"]["max_reserved_mb"])) + " |"
                   if s["gpu"] else " - |")
        print(f"| {LABELS[v]} | {shape} | {s['tokens_per_s']:.0f} ({s['min']:.0f}-{s['max']:.0f}) | {speed} "
              f"| {s['wall_s']:.1f} | {', '.join(f'{x:.0f}' for x in s['rss_per_rank'])} | {s['rss_sum']:.0f} "
              f"| {mem} |{gpu} {s['final_loss']:.5f} |")
    print()
    if args.gpu and ref == "one" and ref_sum:
        for v in args.variants[1:]:
            if summary[v]:
                ratio = summary[v]["tokens_per_s"] / ref_sum["tokens_per_s"]
                print(f"{LABELS[v]}: {ratio:.2f}x one GPU's tokens/s on {n} GPUs, {ratio / n:.0%} of linear scaling")

    # same work: adapters, losses and target tokens of the first successful run of each variant
    first = {v: next((r for r in runs[v] if "error" not in r), None) for v in args.variants}
    agree = {}
    if ref in adapters:
        for v in args.variants[1:]:
            if v in adapters:
                pairs = zip(first[ref]["losses"], first[v]["losses"])
                diff, n_over, n_all = adapter_diff(adapters[ref], adapters[v])
                agree[v] = {"adapter_max_abs_diff": diff, "adapter_elements_over_1e-5": n_over,
                            "adapter_elements": n_all,
                            "loss_max_abs_diff": max(abs(a - b) for a, b in pairs),
                            "same_target_tokens": first[ref]["target_tokens"] == first[v]["target_tokens"]}
        if agree:
            print(f"same work, against {LABELS[ref]} after {args.warmup + args.steps} steps (losses are "
                  "logged to 5 decimals):")
        for v, a in agree.items():
            print(f"  {LABELS[v]}: adapter max |diff| {a['adapter_max_abs_diff']:.1e} "
                  f"({a['adapter_elements_over_1e-5']:,} of {a['adapter_elements']:,} elements over 1e-5), "
                  f"per-step loss max |diff| {a['loss_max_abs_diff']:.1e}, target tokens per step "
                  + ("identical" if a["same_target_tokens"] else "DIFFERENT"))
    print("tokens/s: target tokens of the global step / step seconds (train.py's metrics.jsonl); "
          "peak RSS: VmHWM of each process at exit; wall: launch to exit, start-up, load, final "
          "evaluation and save included")
    print("each variant ran as (through this script's --child wrapper, which records its memory):")
    for v in args.variants:
        print(f"  {v}: {runs[v][0]['command']}")
    kept = [r["folder"] for rs in runs.values() for r in rs if r["folder"]]
    if kept:
        print("run folders kept: " + ", ".join(kept))

    if args.json:
        result = {"command": command, "model": str(folder), "cpu": cpu_name(), "torch": torch.__version__,
                  "args": vars(args), "summary": summary, "agreement": agree, "runs": runs}
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if any(s is None for s in summary.values()):
        raise SystemExit("some variants failed; their logs are in the folders above")


if __name__ == "__main__":
    main()
