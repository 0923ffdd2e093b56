"""train.py: token-weighted accumulation, exact resume, interruption, NaN stop, presets, bad input."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from lora import LoRAConfig, inject
from model import UserError, load_model
from model.loss import target_nll
from tests.helpers import tiny_model_with_smollm2_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    return tiny_model_with_smollm2_tokenizer(tmp_path_factory.mktemp("tiny"), smollm2_dir)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """24 short rows in the training schema, with a held-out file beside them."""
    folder = tmp_path_factory.mktemp("rows")
    rows = [{"instruction": "Be kind.", "input": f"Message number {i}: I feel tense about item {i}.",
             "output": f"Thanks for telling me about {i}. Try a slow breath and a short walk."}
            for i in range(24)]
    with open(folder / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:20])
    with open(folder / "eval.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[20:])
    return folder


def _args(tiny_dir, rows_file, out, *extra):
    return ["--model", str(tiny_dir), "--data", str(rows_file / "train.jsonl"),
            "--eval-data", str(rows_file / "eval.jsonl"), "--out", str(out), "--max-len", "64",
            "--batch-size", "2", "--lr", "1e-2", "--eval-every", "2", "--save-every", "2",
            "--warmup-steps", "1", *extra]


def _losses(out):
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in lines]


def _lora_model(tiny_dir):
    """The tiny model with LoRA r=4 and a non-zero B, so every LoRA matrix gets a gradient."""
    torch.manual_seed(0)
    model = load_model(tiny_dir)
    inject(model, LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


def test_accumulated_gradient_equals_one_big_batch(tiny_dir):
    """4 micro-batches of 2, each loss summed and divided by the targets of all 8, give the
    gradient of one batch of 8 (rows of different lengths, so per-micro-batch means would not)."""
    from data import build_examples, pad_batch
    from data.rows import Row
    from model import load_tokenizer
    tok = load_tokenizer(tiny_dir)
    rows = [Row("Be kind.", f"Message {i}" + " really" * i, "Okay." + " Breathe." * (i % 3 + 1)) for i in range(8)]
    examples, _ = build_examples(rows, tok, "chat", 128, progress=False)

    def grads(micro_size):
        model = _lora_model(tiny_dir)
        micro = [pad_batch(examples[i:i + micro_size], tok.eos_id) for i in range(0, 8, micro_size)]
        n_targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        for b in micro:
            nll, _ = target_nll(model, b["input_ids"], b["labels"])
            (nll / n_targets).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    accumulated, big = grads(2), grads(8)
    for name in big:
        assert torch.allclose(accumulated[name], big[name], atol=1e-5, rtol=0), name


def test_target_nll_equals_transformers_loss_times_target_count(tiny_dir):
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ours = load_model(tiny_dir)
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 9:] = -100
    with torch.no_grad():
        nll, n = target_nll(ours, ids, labels)
        ref = hf(ids, labels=labels).loss
    assert n == 7 + 4  # row 0: positions 5..11; row 1: positions 5..8
    assert abs(nll.item() / n - ref.item()) < 1e-5


def test_loss_in_vocabulary_chunks_equals_the_loss_in_one_piece(tiny_dir):
    """Past chunk_size targets the vocabulary projection runs chunk by chunk and is recomputed in
    backward: the same loss and gradients, and never more than chunk_size rows of logits."""
    ids = torch.randint(0, 49152, (3, 20), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :4] = -100  # targets are labels[:, 1:]: 3 rows x 16 = 48

    def run(chunk_size, grad=True):
        model = _lora_model(tiny_dir)
        model.train()
        rows, project = [], model.output
        model.output = lambda h: rows.append(h.shape[0]) or project(h)
        with torch.set_grad_enabled(grad):
            nll, n = target_nll(model, ids, labels, chunk_size=chunk_size)
        if grad:
            nll.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        return nll.item(), n, rows, grads

    whole, n_whole, rows_whole, grads_whole = run(10**6)
    chunked, n_chunked, rows_chunked, grads_chunked = run(7)
    assert n_whole == n_chunked == 48 and rows_whole == [48]
    assert max(rows_chunked) == 7 and sum(rows_chunked) == 2 * 48  # forward, then again in backward
    assert abs(chunked - whole) < 1e-4 * whole
    for name, grad in grads_whole.items():
        # float32 sums in another order (chunks, thread count): agree to 1e-5 of the tensor's scale
        scale = grad.abs().max().item()
        assert (grads_chunked[name] - grad).abs().max().item() <= 1e-5 * scale + 1e-8, name
    no_grad, _, rows_no_grad, _ = run(7, grad=False)  # evaluation: chunks, nothing recomputed
    assert sum(rows_no_grad) == 48 and abs(no_grad - whole) < 1e-4 * whole


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(1))
    result = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = load_model(tiny_dir)
        inject(model, LoRAConfig(r=4, alpha=8))
        model.gradient_checkpointing = ckpt
        model.train()
        nll, _ = target_nll(model, ids, ids)
        nll.backward()
        result.append(model.layers[0].self_attn.q_proj.lora_B.grad.clone())
    assert torch.allclose(result[0], result[1], atol=1e-6)


def test_training_lowers_eval_loss_and_writes_the_run_folder(tiny_dir, rows_file, tmp_path):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "6"))
    losses = _losses(out)
    evals = [e for _, _, e in losses if e is not None]
    assert evals[-1] < evals[0]
    for name in ("adapter_config.json", "adapter_model.safetensors", "train_config.json",
                 "metrics.jsonl", "checkpoint.pt", "loss.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 6
    # The adapter loads back onto the base and changes its outputs.
    tuned, base = load_model(tiny_dir, adapter=out), load_model(tiny_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids), base(ids))


def test_tokens_per_second_counts_target_tokens_not_padding(tiny_dir, rows_file, tmp_path):
    """One epoch of the 20 rows holds the same target tokens however it is batched; batches of 4
    are padded, so a count that included padding (or prompts) would differ."""
    sums = []
    for batch, steps in ((1, 20), (4, 5)):
        out = tmp_path / f"b{batch}"
        train.main(_args(tiny_dir, rows_file, out, "--batch-size", str(batch), "--max-steps", str(steps),
                         "--eval-every", "0", "--save-every", "0", "--no-group-by-length"))
        records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        steps_seen = [r for r in records if "target_tokens" in r]
        assert len(steps_seen) == steps and all(r["tokens_per_s"] > 0 for r in steps_seen)
        sums.append(sum(r["target_tokens"] for r in steps_seen))
    assert sums[0] == sums[1] > 0


def test_resumed_run_gives_the_same_loss_curve_as_an_uninterrupted_one(tiny_dir, rows_file, tmp_path, monkeypatch):
    whole, split = tmp_path / "whole", tmp_path / "split"
    extra = ["--max-steps", "6", "--lora-dropout", "0.1", "--group-by-length"]  # dropout: RNG must resume too
    train.main(_args(tiny_dir, rows_file, whole, *extra))

    # The split run gets a real SIGINT right after step 3 is logged (an odd step, between
    # checkpoints): it must finish that step, save, and exit 130.
    real_write = train._write_metrics

    def write_then_interrupt(path, records, append=False):
        real_write(path, records, append)
        if any(r.get("step") == 3 for r in records):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train, "_write_metrics", write_then_interrupt)
    with pytest.raises(SystemExit) as stop:
        train.main(_args(tiny_dir, rows_file, split, *extra))
    assert stop.value.code == 130
    monkeypatch.setattr(train, "_write_metrics", real_write)
    train.main(_args(tiny_dir, rows_file, split, *extra) + ["--resume"])
    assert _losses(split) == _losses(whole)


def test_resume_refuses_changed_settings(tiny_dir, rows_file, tmp_path):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2"))
    with pytest.raises(UserError, match="lora_r"):
        train.main(_args(tiny_dir, rows_file, out, "--max-steps", "4", "--lora-r", "8") + ["--resume"])


def test_starting_over_an_existing_run_needs_resume(tiny_dir, rows_file, tmp_path):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2"))
    with pytest.raises(UserError, match="--resume"):
        train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tiny_dir, rows_file, tmp_path, monkeypatch):
    import model.loss
    real = model.loss.target_nll
    calls = {"n": 0}

    def poisoned(m, x, y):
        nll, n = real(m, x, y)
        calls["n"] += m.training  # training steps only; evaluation runs in eval mode
        return (nll * float("nan") if m.training and calls["n"] == 3 else nll), n

    monkeypatch.setattr(model.loss, "target_nll", poisoned)   # what TargetLoss, which the loop calls, calls
    out = tmp_path / "run"
    with pytest.raises(UserError, match="loss is nan.*checkpoint"):
        train.main(_args(tiny_dir, rows_file, out, "--max-steps", "6"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2  # the last good checkpoint (save-every 2), not the poisoned step


def test_checkpoint_write_is_atomic(tiny_dir, rows_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2"))
    real_save = torch.save

    def crash(obj, f, *a, **k):  # training/checkpoint.py hands torch.save the open temporary file
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        train.main(_args(tiny_dir, rows_file, out, "--max-steps", "4") + ["--resume"])
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tiny_dir, rows_file, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *_args(tiny_dir, rows_file, out, "--max-steps", "400",
                                              "--save-every", "1000", "--eval-every", "0")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 400
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == step


def test_presets_hold_the_seed_recipe():
    cfg, _ = train.parse_args(["--config", "llama3-8b-t4"])
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 16, 0.0)
    assert cfg.targets.split(",") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (cfg.lr, cfg.lr_schedule, cfg.warmup_steps) == (2e-4, "linear", 5)
    assert (cfg.batch_size, cfg.grad_accum, cfg.max_steps) == (2, 4, 300)
    assert (cfg.optim, cfg.weight_decay, cfg.seed, cfg.max_len) == ("adamw8bit", 0.01, 3407, 2048)
    assert cfg.grad_checkpointing and cfg.quantize == "nf4" and cfg.template == "alpaca"


@pytest.mark.parametrize("preset", ["cpu-smollm2", "llama3-8b-t4"])
def test_presets_hold_only_what_differs_from_the_defaults(preset):
    defaults = dataclasses.asdict(train.TrainConfig())
    same = [k for k, v in train.load_preset(preset).items() if defaults[k] == v]
    assert same == [], f"{preset} repeats built-in defaults: {same}"


def test_explicit_flags_win_over_the_preset():
    cfg, _ = train.parse_args(["--config", "llama3-8b-t4", "--lora-r", "32", "--max-steps", "900"])
    assert (cfg.lora_r, cfg.max_steps, cfg.lora_alpha) == (32, 900, 16)


def test_default_preset_is_cpu_smollm2():
    cfg, _ = train.parse_args([])
    assert cfg.model is None and cfg.data == "sample" and cfg.quantize is None


def test_unknown_preset_is_named():
    with pytest.raises(UserError, match="no-such-preset"):
        train.parse_args(["--config", "no-such-preset"])


def test_help_explains_every_flag():
    run = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    for flag in ("--model", "--data", "--out", "--max-steps", "--batch-size", "--grad-accum", "--lr",
                 "--lora-r", "--lora-alpha", "--eval-every", "--save-every", "--resume", "--quantize",
                 "--seed", "--config", "--merge", "--arch"):
        assert flag in run.stdout


def help_entries(capsys) -> list[str]:
    """Each flag's --help entry as one string: its line, and the next ones where argparse wraps."""
    lines, entries = capsys.readouterr().out.splitlines(), []
    for line in lines:
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    return entries


def shown_in_help(entries: list[str], flag: str) -> tuple[str, str]:
    """(value, source) of a flag's "(this run: VALUE, from SOURCE)"."""
    line = next(e for e in entries if e.startswith(f"  {flag} ") or e.startswith(f"  {flag},"))
    return re.search(r"\(this run: (.*), from (.*)\)$", line).groups()


@pytest.mark.parametrize("preset", ["cpu-smollm2", "llama3-8b-t4"])
def test_help_shows_the_value_a_run_really_uses(preset, capsys, monkeypatch):
    """Every flag's "(this run: X, from SOURCE)" in --help is the value parse_args gives with no flag."""
    monkeypatch.setenv("COLUMNS", "1000")               # one line per flag
    with pytest.raises(SystemExit):
        train.parse_args(["--config", preset, "--help"])
    entries = help_entries(capsys)
    cfg, _ = train.parse_args(["--config", preset])
    preset_keys = set(train.load_preset(preset))
    for f in dataclasses.fields(cfg):
        flag = "--" + f.name.replace("_", "-")
        shown, source = shown_in_help(entries, flag)
        value = getattr(cfg, f.name)
        expected = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert shown == expected, flag
        assert source == (f"preset {preset}" if f.name in preset_keys else "the default"), flag
    if preset == "cpu-smollm2":              # the case that was wrong: alpha 32 and lr 1e-3 in a plain run
        assert shown_in_help(entries, "--lora-alpha") == ("32", "preset cpu-smollm2")


def test_help_names_a_flag_given_on_the_command_line_as_the_source(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        train.parse_args(["--lr", "0.003", "--no-merge", "--help"])
    entries = help_entries(capsys)
    assert shown_in_help(entries, "--lr") == ("0.003", "--lr")
    assert shown_in_help(entries, "--merge") == ("false", "--merge")
    assert shown_in_help(entries, "--max-steps")[1] == "preset cpu-smollm2"
    cfg, _ = train.parse_args(["--lr", "0.003", "--no-merge"])
    assert cfg.lr == 0.003 and cfg.merge is False


def test_unknown_lora_target_is_a_one_line_error_before_the_model_loads(tmp_path):
    with pytest.raises(UserError, match="--targets .*qq_proj"):
        train.main(["--targets", "q_proj,qq_proj", "--out", str(tmp_path / "o"), "--max-steps", "1"])
    assert not (tmp_path / "o").exists()


def test_bad_data_line_under_strict_is_a_one_line_error(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "b", "output": "c"}\nnot json\n')
    run = subprocess.run([sys.executable, "train.py", "--model", str(tiny_dir), "--data", str(bad),
                          "--out", str(tmp_path / "o"), "--strict"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()
    assert len(last) == 1 and "bad.jsonl" in last[0] and "2" in last[0]
