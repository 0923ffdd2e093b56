"""train.py's edges: bad settings fail before anything loads and leave no run folder; a run ends
by naming every file it wrote."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from model import UserError
from tests.helpers import tiny_model_with_smollm2_tokenizer

BAD_FLAGS = [
    (["--lora-r", "0"], "--lora-r 0"), (["--lr", "-1"], "--lr -1"), (["--lr", "nan"], "--lr nan"),
    (["--max-steps", "0"], "--max-steps 0"), (["--batch-size", "0"], "--batch-size 0"),
    (["--grad-accum", "0"], "--grad-accum 0"), (["--max-len", "0"], "--max-len 0"),
    (["--lora-alpha", "0"], "--lora-alpha 0"), (["--lora-dropout", "1"], "--lora-dropout 1"),
    (["--eval-fraction", "0"], "--eval-fraction 0"), (["--eval-fraction", "1"], "--eval-fraction 1"),
    (["--warmup-steps", "-1"], "--warmup-steps -1"), (["--grad-clip", "-0.5"], "--grad-clip -0.5"),
    (["--save-every", "-1"], "--save-every -1"), (["--eval-every", "-2"], "--eval-every -2"),
    (["--log-every", "0"], "--log-every 0"), (["--weight-decay", "-1"], "--weight-decay -1"),
    (["--template", "llama"], "--template llama"), (["--arch", "gru"], "--arch gru"),
    (["--optim", "sgd"], "--optim sgd"), (["--lr-schedule", "step"], "--lr-schedule step"),
    (["--quantize", "int8"], "--quantize int8"), (["--dtype", "float8"], "--dtype float8"),
    (["--device", "tpu"], "--device tpu"), (["--targets", ","], "--targets"),
    (["--arch", "lstm", "--resume"], "--resume"), (["--resume"], "--resume: no checkpoint"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_value_is_named_before_anything_loads_and_leaves_no_folder(tmp_path, flags, named):
    out = tmp_path / "run"
    # A model that does not exist: had the check come after the model load, that error would win.
    with pytest.raises(UserError, match=re.escape(named)):
        train.main(["--model", str(tmp_path / "no-such-model"), "--out", str(out), *flags])
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_named_and_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--device cuda: PyTorch sees no CUDA GPU"):
        train.main(["--model", str(tmp_path / "no-such-model"), "--out", str(out), "--device", "cuda"])
    assert not out.exists()


def test_preset_value_of_the_wrong_type_is_named(tmp_path):
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"lora_r": "16"}))
    with pytest.raises(UserError, match=r"--lora-r '16': must be an integer"):
        train.main(["--config", str(preset), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_bad_flag_from_the_command_line_is_one_line_and_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "train.py", "--lora-r", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == ["error: --lora-r 0: must be at least 1"]
    assert not out.exists()


def test_missing_data_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="no-such-rows.jsonl"):
        train.main(["--data", str(tmp_path / "no-such-rows.jsonl"), "--out", str(out)])
    assert not out.exists()


def test_missing_model_leaves_no_run_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="no-such-model"):
        train.main(["--model", str(tmp_path / "no-such-model"), "--out", str(out), "--max-steps", "1"])
    assert not out.exists()


def _named_paths(text: str, out: Path) -> list[Path]:
    """Paths inside out that the closing lines (from 'run folder ...' on) name."""
    tail = text[text.rindex(f"run folder {out}:"):]
    return [Path(p) for p in re.findall(re.escape(str(out)) + r"/[\w.\-/]+", tail)]


def test_a_finished_run_names_every_file_it_wrote(tmp_path, smollm2_dir, capsys):
    tiny = tiny_model_with_smollm2_tokenizer(tmp_path / "tiny", smollm2_dir)
    out = tmp_path / "run"
    train.main(["--model", str(tiny), "--out", str(out), "--max-steps", "1", "--max-len", "48",
                "--batch-size", "2", "--eval-every", "0"])
    named = _named_paths(capsys.readouterr().out, out)
    assert {p.name for p in named} >= {"adapter_model.safetensors", "adapter_config.json", "loss.png",
                                       "metrics.jsonl", "checkpoint.pt", "train_config.json",
                                       "base_model.json", "state.json"}
    assert all(p.exists() for p in named), [p for p in named if not p.exists()]


def test_a_char_baseline_names_every_file_it_wrote(tmp_path, capsys):
    out = tmp_path / "lstm"
    train.main(["--arch", "lstm", "--out", str(out), "--char-steps", "3", "--char-hidden", "8"])
    named = _named_paths(capsys.readouterr().out, out)
    assert {p.name for p in named} >= {"char_model.pt", "metrics.jsonl", "train_config.json"}
    assert all(p.exists() for p in named)
