"""Fine-tune a Llama-3-family model with LoRA (QLoRA with --quantize nf4), top to bottom.

    python train.py                                   # preset cpu-smollm2: embedded model, bundled data, CPU
    python train.py --config llama3-8b-t4             # the seed project's recipe on a 16 GB T4
    python train.py --data my.jsonl --max-steps 50    # flags win over the preset
    python train.py --out runs/x --resume             # continue a stopped run exactly
    python train.py --arch lstm                       # a char-LSTM baseline on the same data
    torchrun --nproc_per_node 2 train.py --parallel fsdp ...   # one run over 2 GPUs (or CPU ranks)

The run folder (--out) gets the adapter in PEFT format (adapter_config.json and
adapter_model.safetensors), train_config.json, metrics.jsonl, loss.png, checkpoint.pt and
state.json (the step the adapter was saved at; training/checkpoint.py keeps the two consistent).
"""

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data import Batcher, build_examples, eval_batches, field_char_limit, load_train_eval, pad_id_for
from lora import inject, save_adapter, save_merged
from lora.inject import DEFAULT_TARGETS, LoRAConfig, ParamCount
from model import load_model, load_tokenizer
from model.errors import UserError
from model.checkpoint.gguf import DEFAULT_MODEL_ID
from model.checkpoint.identity import base_identity
from model.loss import TargetLoss
from model.rnn import CharConfig, row_text, unigram_bits_per_char
from model.checkpoint.load import TRAIN_QUANTIZE, parse_dtype, parse_quantize, resolve_model_dir
from training import checkpoint, distributed
from training.char import train_char_model
from training.checks import check_config, check_device
from training.flags import opt, parse_config
from training.run_config import NAME as RUN_CONFIG, write_run_config
from training.step import eval_loss, make_optimizer, make_scaler, train_step

PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    # what to train
    arch: str = opt("llama", "llama fine-tunes an LLM with LoRA; rnn / lstm train the char-level baselines")
    model: str | None = opt(None, "model folder or hub repo id; none: the embedded SmolLM2-135M-Instruct",
                            nullable=True)
    data: str | None = opt("sample",
        "training rows: 'sample' (bundled), a .json/.jsonl/.csv file or folder, or a hub dataset id")
    eval_data: str | None = opt(None, "evaluation rows; none: the data's own eval file, else a held-out split",
                                nullable=True)
    eval_fraction: float = opt(0.005, "share of rows held out for evaluation when the data has no eval file")
    strict: bool = opt(False,
        "stop at the first line or row that would be skipped (not UTF-8, malformed JSON/CSV, "
        "empty input or output), naming file:line, instead of skipping and counting it")
    template: str = opt("chat", "prompt format: chat (the model's chat template) or alpaca (the seed's prompt)")
    max_len: int = opt(512, "longest example in tokens; longer rows are truncated and counted")
    out: str = opt("runs/cpu-smollm2", "run folder for the adapter, metrics, plot and checkpoints")
    # LoRA
    lora_r: int = opt(LoRAConfig.r, "LoRA rank r")
    lora_alpha: float = opt(LoRAConfig.alpha, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = opt(LoRAConfig.dropout, "dropout on the LoRA input (0 skips it)")
    rslora: bool = opt(LoRAConfig.use_rslora, "scale by alpha / sqrt(r)")
    targets: str = opt(",".join(DEFAULT_TARGETS),
        "comma-separated module names that get LoRA (short names q,k,v,o,gate,up,down work)")
    # optimisation
    max_steps: int = opt(60, "optimizer steps")
    batch_size: int = opt(4, "examples per micro-batch")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    lr: float = opt(2e-4, "peak learning rate")
    lr_schedule: str = opt("linear", "after warmup: linear, cosine or constant")
    warmup_steps: int = opt(5, "steps of linear warmup from 0")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    optim: str = opt("adamw", "adamw (torch) or adamw8bit (bitsandbytes, as the seed project used)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    group_by_length: bool = opt(False, "batch examples of similar length together (less padding)")
    # precision and memory
    quantize: str | None = opt(None, "none, or nf4: the base linears in 4 bits (QLoRA)")
    dtype: str = opt("float32",
        "base weights and compute: float32, bfloat16, float16 (with a GradScaler) or auto (bf16 "
        "on GPUs that have it, else fp16; fp32 on CPU)")
    grad_checkpointing: bool = opt(False, "recompute block activations in backward to save memory")
    device: str = opt("auto", "auto (cuda when there is a GPU, else cpu), cpu, cuda or cuda:N")
    # several processes, launched by torchrun (training/distributed.py)
    parallel: str = opt("none",
        "none; under torchrun: ddp (a model replica per rank) or fsdp (parameters, 4-bit weights "
        "included, gradients and AdamW state sharded across ranks). --batch-size stays per rank")
    cpu_offload: bool = opt(False, "with --parallel fsdp: keep the shards, their gradients and AdamW's "
                                   "state in CPU RAM (GPUs hold only the block being computed)")
    dist_timeout: float = opt(600.0, "seconds a rank waits for the others in one exchange before it fails")
    # bookkeeping
    seed: int = opt(3407, "random seed for LoRA init, data order and dropout")
    eval_every: int = opt(20, "evaluate every N steps (0 = only at the end)")
    save_every: int = opt(20, "checkpoint every N steps (0 = only at the end)")
    log_every: int = opt(1, "write a metrics line every N steps")
    merge: bool = opt(False, "also write the merged full model")
    # char baselines (--arch rnn|lstm)
    char_steps: int = opt(1500, "training steps of the char baselines")
    char_hidden: int = opt(256, "hidden size of the char baselines")


def parse_args(argv=None) -> tuple[TrainConfig, bool]:
    # --config first: the preset decides the value a run uses, and --help shows that value.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=None)
    preset_name = first.parse_known_args(argv)[0].config or "cpu-smollm2"
    preset = load_preset(preset_name)
    unknown = set(preset) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise UserError(f"--config {preset_name}: unknown key '{sorted(unknown)[0]}'")

    def script_flags(p: argparse.ArgumentParser):
        p.add_argument("--config", default=None,
                       help="a preset name (cpu-smollm2, llama3-8b-t4) or a JSON file; flags given "
                            "here win (default: cpu-smollm2)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")

    cfg, args = parse_config(TrainConfig, argv, description=__doc__, preset=preset,
                             preset_name=preset_name, extra_flags=script_flags)
    cfg.quantize = parse_quantize(cfg.quantize, allowed=TRAIN_QUANTIZE)
    return cfg, args.resume


def load_preset(name: str) -> dict:
    path = Path(name) if name.endswith(".json") else PRESET_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.json")))
        raise UserError(f"--config {name}: no such preset or file (presets: {known})")
    try:
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path}: not valid JSON ({e})") from None


def main(argv=None):
    cfg, resume = parse_args(argv)
    check_config(cfg, resume)  # before any load, and before --out exists: a typo leaves no folder
    out = Path(cfg.out)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    world = distributed.setup(cfg.parallel, cfg.device, cfg.dist_timeout)  # torchrun's ranks, if any
    try:
        run(cfg, resume, out, world)
    except RuntimeError as e:
        if world.distributed and distributed.lost_a_rank(e):
            raise UserError(f"rank {world.rank}: lost contact with another rank ({distributed.first_line(e)}); "
                            f"see that rank's messages, then resume with --out {out} --resume") from None
        raise
    finally:
        distributed.teardown(world)


def run(cfg: TrainConfig, resume: bool, out: Path, world: distributed.World):

    # -------------------------------------------------------------------- data
    # Fields are cut to what max_len tokens could need before anything is tokenized (data/cap.py).
    train_rows, eval_rows, load_stats = load_train_eval(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                                                        strict=cfg.strict, max_chars=field_char_limit(cfg.max_len))
    print(f"data: {len(train_rows)} training rows, {len(eval_rows)} evaluation rows ({load_stats.summary()})")

    if cfg.arch in ("rnn", "lstm"):
        return train_char_baseline(cfg, train_rows, eval_rows, out)
    train_llm(cfg, train_rows, eval_rows, out, resume, world)


def train_char_baseline(cfg, train_rows, eval_rows, out):
    train_texts = [row_text(r.input, r.output) for r in train_rows]
    eval_texts = [row_text(r.input, r.output) for r in eval_rows]
    char_cfg = CharConfig(arch=cfg.arch, hidden=cfg.char_hidden, steps=cfg.char_steps, seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    result = train_char_model(train_texts, eval_texts, char_cfg, out)
    unigram = unigram_bits_per_char("".join(train_texts), "".join(eval_texts))
    write_run_config(out, cfg)
    print(f"{cfg.arch}: validation {result['val_bpc']:.3f} bits/char (unigram baseline {unigram:.3f})")
    print_outputs(out, [("model", "char_model.pt"), ("metrics", "metrics.jsonl"), ("config", RUN_CONFIG)])
    print(f"compare it with: python evaluate.py --variants base,{out}")


def train_llm(cfg: TrainConfig, train_rows, eval_rows, out: Path, resume: bool, world: distributed.World):
    device, dtype = device_and_dtype(cfg, world)
    settings = resumable(cfg, world)
    # Read and vetted before the model loads: a damaged or foreign checkpoint fails fast.
    state = checkpoint.load_for_resume(out, settings) if resume else None
    if world.distributed:
        print(f"parallel: {world.describe()}; global batch {cfg.batch_size} x {world.size} ranks x "
              f"{cfg.grad_accum} accumulation = {cfg.batch_size * world.size * cfg.grad_accum} examples")

    # -------------------------------------------------------------------- model + LoRA, data
    folder, tokenizer, model, loss_module = load_for_training(cfg, world, device, dtype)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    batcher, eval_ex, pad_id = examples_and_batches(cfg, world, tokenizer, train_rows, eval_rows)

    # -------------------------------------------------------------------- optimizer + schedule
    optimizer = make_optimizer(cfg.optim, params, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    # Mixed precision on GPU: compute in the base dtype; float16 needs loss scaling (T4 has no bf16).
    amp = device.type == "cuda" and dtype != torch.float32
    scaler = make_scaler(amp and dtype == torch.float16, world)

    evaluate = lambda: eval_loss(loss_module, eval_batches(eval_ex, cfg.batch_size, pad_id,  # noqa: E731
                                                           world.rank, world.size), device, dtype, amp, world)

    # -------------------------------------------------------------------- run folder, resume
    base = base_identity(folder, cfg.model)  # -> base_model.json: loading onto another base warns
    write_adapter = lambda lora: save_adapter(model, out, base_model=cfg.model or DEFAULT_MODEL_ID,  # noqa: E731
                                              identity=base, weights=lora)
    run = checkpoint.Run(out, world, loss_module, optimizer, write_adapter)
    save = lambda: run.save(checkpoint.snapshot(  # noqa: E731
        step, settings, history, model, optimizer, scheduler, scaler, batcher, world))
    step, history = start_run_folder(cfg, world, out, run, state, model, scheduler, scaler, batcher)
    metrics_path, checkpoint_path = out / "metrics.jsonl", out / checkpoint.CHECKPOINT_NAME
    write_metrics = _write_metrics if world.is_main else lambda *a, **k: None

    # -------------------------------------------------------------------- the loop
    loss_module.train()
    if step == 0 and cfg.eval_every > 0:
        history.append({"step": 0, "eval_loss": evaluate()})
        write_metrics(metrics_path, history[-1:], append=True)
        print(f"step 0: eval loss {history[-1]['eval_loss']:.4f}")
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, disable=not world.is_main)
    with checkpoint.CtrlC(say=tqdm.write) as ctrl_c:  # Ctrl-C: finish the step, save, exit 130
        try:
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                micro = [next(batcher) for _ in range(cfg.grad_accum)]
                loss, n_targets, grad_norm = train_step(loss_module, micro, params, optimizer, scaler,
                                                        cfg.grad_clip, device, dtype, amp, world)
                if not math.isfinite(loss):
                    raise UserError(f"step {step + 1}: the loss is {loss}; stopping. The last good "
                                    f"checkpoint is {checkpoint_path} (try a lower --lr)")
                lr = optimizer.param_groups[0]["lr"]   # the rate this step used
                scheduler.step()
                step += 1
                # tokens/s counts the tokens the loss is taken on (answers, over all ranks), not the
                # prompt or padding.
                record = {"step": step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                          "target_tokens": n_targets, "tokens_per_s": round(n_targets / (time.perf_counter() - t0), 1),
                          "epoch": round(batcher.epochs_done, 3)}
                if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.max_steps:
                    record["eval_loss"] = round(evaluate(), 5)
                    bar.write(f"step {step}: eval loss {record['eval_loss']:.4f}")
                history.append(record)
                if step % cfg.log_every == 0 or "eval_loss" in record:
                    write_metrics(metrics_path, [record], append=True)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.update(1)
                if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps:
                    save()
                if world.any(ctrl_c.pressed):  # every rank stops after the same step
                    raise KeyboardInterrupt
        except KeyboardInterrupt:  # raised above, once the step in flight has finished
            bar.close()
            save()
            print(f"\ninterrupted: saved step {step}; continue with --out {out} --resume", file=sys.stderr)
            sys.exit(130)
    bar.close()
    if world.is_main:
        finish(cfg, out, history, model, folder, dtype, step, world)


def load_for_training(cfg: TrainConfig, world: distributed.World, device, dtype):
    """(model folder, tokenizer, model with LoRA, the loss module to train: the model's loss,
    wrapped in DDP or sharded with FSDP under torchrun)."""
    # FSDP loads on the CPU and shards each block as soon as it is loaded, moving only this
    # rank's shard to its GPU (fully_shard does the move): no GPU ever holds the whole model,
    # and no rank's CPU RAM does either.
    fsdp = cfg.parallel == "fsdp"
    shard = (lambda block: distributed.shard_block(block, world, cfg.cpu_offload)) if fsdp else None
    folder, tokenizer, model = load_with_lora(cfg, torch.device("cpu") if fsdp else device, dtype,
                                              quiet=not world.is_main, shard_block=shard)
    return folder, tokenizer, model, distributed.wrap(TargetLoss(model), model, world, cfg.cpu_offload)


def examples_and_batches(cfg: TrainConfig, world: distributed.World, tokenizer, train_rows, eval_rows):
    """(the training batcher, this rank's share of each global batch; evaluation examples; pad id)."""
    train_ex, fstats = build_examples(train_rows, tokenizer, cfg.template, cfg.max_len, progress=world.is_main)
    eval_ex, _ = build_examples(eval_rows, tokenizer, cfg.template, cfg.max_len, progress=False)
    print(f"examples: {fstats.summary()}")
    pad_id = pad_id_for(tokenizer)
    batcher = Batcher(train_ex, cfg.batch_size, pad_id, seed=cfg.seed, group_by_length=cfg.group_by_length,
                      rank=world.rank, world_size=world.size)
    return batcher, eval_ex, pad_id


def start_run_folder(cfg: TrainConfig, world: distributed.World, out: Path, run, state, model, scheduler,
                     scaler, batcher) -> tuple[int, list]:
    """Makes --out ready (rank 0), puts a resumed run's state back; returns (step, metrics history)."""
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_tmp(out)  # a killed save's half-written files
    world.barrier()
    step, history = 0, []
    if state is not None:
        step, history = run.resume(state, model, scheduler, scaler, batcher)
        # The saved learning rate was set by the old --max-steps; the next step follows this run's.
        for group in run.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, scheduler.last_epoch)
    if world.is_main:
        _write_metrics(out / "metrics.jsonl", history)  # rewritten up to the resumed step: no duplicates
        write_run_config(out, cfg)
    return step, history


def device_and_dtype(cfg: TrainConfig, world: distributed.World) -> tuple[torch.device, torch.dtype]:
    """--device auto: cuda when there is a GPU (under torchrun: this rank's); --dtype auto: bf16
    where the GPU has it, fp16 on older GPUs (T4), fp32 on CPU (written back into cfg, so
    train_config.json says what ran)."""
    # the one place "auto" is resolved (distributed.setup resolved it for each rank)
    device = world.device if world.distributed else torch.device(check_device(cfg.device))
    if cfg.dtype == "auto":
        cfg.dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") \
            if device.type == "cuda" else "float32"
    return device, parse_dtype(cfg.dtype)


def load_with_lora(cfg: TrainConfig, device, dtype, quiet: bool = False, shard_block=None):
    """(model folder, tokenizer, model with LoRA on cfg.targets; only LoRA trains). LoRA goes
    into each block as soon as the loader has filled it, and shard_block(block) (FSDP) then
    shards it, before the next block is read."""
    folder = resolve_model_dir(cfg.model, quiet=quiet)
    tokenizer = load_tokenizer(folder)
    lora = LoRAConfig(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.rslora, cfg.targets)
    blocks = []   # each block's parameter counts, taken before it is sharded

    def each_block(i, block):
        blocks.append(inject(block, lora))
        del block.lora_config         # the model holds it (below)
        if shard_block is not None:
            shard_block(block)

    torch.manual_seed(cfg.seed)  # LoRA's A matrices: the same init on every run with this seed
    model = load_model(folder, dtype=dtype, device=device, quantize=cfg.quantize, quiet=quiet,
                       on_block=each_block)
    model.lora_config = lora
    rest = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("layers."))
    counts = ParamCount(sum(c.trainable for c in blocks), sum(c.total for c in blocks) + rest)
    print(f"model: {folder} ({'nf4' if cfg.quantize else cfg.dtype}) on {device}; {counts}")
    model.gradient_checkpointing = cfg.grad_checkpointing
    return folder, tokenizer, model


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (from 0), as a share of --lr: linear warmup
    from 0, then linear or cosine decay to 0 at --max-steps, or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return max(0.0, 1 - progress)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def finish(cfg: TrainConfig, out: Path, history: list[dict], model, folder: Path, dtype, step: int,
           world: distributed.World = distributed.World()):
    """The loss plot, the merged model if asked for, and the closing lines (rank 0 only)."""
    plot_losses(history, out / "loss.png")
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    if len(evals) > 1:
        print(f"eval loss: {evals[0]:.4f} -> {evals[-1]:.4f}")
    elif evals:
        print(f"eval loss: {evals[0]:.4f}")
    if cfg.merge:
        if world.distributed:  # the model is sharded or wrapped: merge the saved adapter into a fresh base
            model = load_model(folder, dtype=dtype, quantize=cfg.quantize, adapter=out, quiet=True)
        save_merged(model, out / "merged", source_dir=folder, dtype=dtype)
    print_outputs(out, [("adapter", "adapter_model.safetensors"), ("adapter", "adapter_config.json"),
                        ("base model", "base_model.json"), ("loss plot", "loss.png"),
                        ("metrics", "metrics.jsonl"), ("checkpoint", checkpoint.CHECKPOINT_NAME),
                        ("step", checkpoint.STATE_NAME), ("config", RUN_CONFIG)]
                  + ([("merged", "merged")] if cfg.merge else []))
    print(f"chat with it: python generate.py --adapter {out}")
    print(f"train further: the same flags plus --resume --max-steps N (N > {step})")


def resumable(cfg: TrainConfig, world: distributed.World = distributed.World()) -> dict:
    """Settings that must not change across --resume (max_steps, eval/save cadence may). The
    batch is the global one (--batch-size x ranks), so a run can resume on another number of
    ranks with the same global batch."""
    free = {"max_steps", "eval_every", "save_every", "log_every", "merge", "device", "out", "strict",
            "parallel", "cpu_offload", "dist_timeout"}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
    settings["batch_size"] = cfg.batch_size * world.size
    return settings


def print_outputs(out: Path, files: list[tuple[str, str]]):
    """The run's closing lines: where each file went (only those that were written)."""
    print(f"run folder {out}:")
    for label, name in files:
        if (out / name).exists():
            print(f"  {label + ':':<12}{out / name}")


def _write_metrics(path: Path, records: list[dict], append: bool = False):
    with open(path, "a" if append else "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def plot_losses(history: list[dict], path: Path):
    """Training and evaluation loss against steps (like the seed report's Figure 3.1)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping loss.png (metrics.jsonl has the numbers)")
        return
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss", alpha=0.8)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
