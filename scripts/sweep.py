"""Reproduce the seed report's comparison (its Table 3.1) at CPU scale on the embedded model.

    python scripts/sweep.py                       # trains every variant, then evaluates them all
    python scripts/sweep.py --steps 15 --limit 20 # the scale used for the table in README

Variants, as in the seed report (one step = one optimizer step):
    base           no fine-tuning
    r16            LoRA r16, micro-batch 2, no accumulation        (steps)
    r16-accum4     LoRA r16, micro-batch 2 x accumulation 4        (steps)
    r32            LoRA r32, micro-batch 2 x accumulation 4        (steps)
    r32-3x         LoRA r32, micro-batch 2 x accumulation 4        (3 x steps)
    rnn, lstm      char-level baselines on the same rows
Each run goes to OUT/<variant>; a finished run is not trained again, so a stopped sweep picks up
where it was. Writes OUT/eval/results.md (and the rest of evaluate.py's outputs) and prints the
wall time of every stage.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--out", default="runs/sweep", help="folder for every run and the evaluation")
p.add_argument("--steps", type=int, default=15, help="optimizer steps of the base unit (r32-3x runs 3x this)")
p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of every LoRA run")
p.add_argument("--limit", type=int, default=20, help="evaluation rows to answer (the bundled set has 62)")
p.add_argument("--max-new-tokens", type=int, default=96, help="answer length limit in evaluation")
p.add_argument("--char-steps", type=int, default=1500, help="training steps of the char baselines")
p.add_argument("--seed", type=int, default=3407, help="seed for training and evaluation")
args = p.parse_args()

out = Path(args.out)
common = ["--lr", str(args.lr), "--seed", str(args.seed), "--eval-every", "0", "--save-every", "0",
          "--batch-size", "2"]
RUNS = {
    "r16": ["--lora-r", "16", "--lora-alpha", "32", "--grad-accum", "1", "--max-steps", str(args.steps)],
    "r16-accum4": ["--lora-r", "16", "--lora-alpha", "32", "--grad-accum", "4", "--max-steps", str(args.steps)],
    "r32": ["--lora-r", "32", "--lora-alpha", "64", "--grad-accum", "4", "--max-steps", str(args.steps)],
    "r32-3x": ["--lora-r", "32", "--lora-alpha", "64", "--grad-accum", "4", "--max-steps", str(3 * args.steps)],
    "rnn": ["--arch", "rnn", "--char-steps", str(args.char_steps)],
    "lstm": ["--arch", "lstm", "--char-steps", str(args.char_steps)],
}


def run(cmd: list[str], label: str):
    t0 = time.perf_counter()
    print(f"\n== {label}: {' '.join(cmd)}", flush=True)
    code = subprocess.call([sys.executable, *cmd], cwd=ROOT)
    if code != 0:
        sys.exit(f"sweep: '{label}' failed with exit code {code}")
    print(f"== {label}: {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


timings = {}
for name, flags in RUNS.items():
    run_dir = out / name
    done = (run_dir / "adapter_model.safetensors").is_file() or (run_dir / "char_model.pt").is_file()
    if done:
        print(f"== {name}: already trained in {run_dir}")
        continue
    timings[name] = run(["train.py", "--out", str(run_dir), *common, *flags], f"train {name}")

variants = ",".join(["base"] + [str(out / name) for name in RUNS])
timings["evaluate"] = run(["evaluate.py", "--variants", variants, "--limit", str(args.limit),
                           "--max-new-tokens", str(args.max_new_tokens), "--seed", str(args.seed),
                           "--out", str(out / "eval")], "evaluate")
print("\nwall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
print(f"total: {sum(timings.values()) / 60:.1f} min; table: {out / 'eval' / 'results.md'}")
