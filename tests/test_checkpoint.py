"""The run folder's saved state (training/checkpoint.py): no pickle runs, a damaged checkpoint is
one line, and a save killed at any point leaves a folder that --resume repairs and continues exactly."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from lora import load_adapter
from model import UserError, load_model
from tests.helpers import tiny_model_with_smollm2_tokenizer
from training import checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    return tiny_model_with_smollm2_tokenizer(tmp_path_factory.mktemp("tiny"), smollm2_dir)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    rows = [{"instruction": "Be kind.", "input": f"Message {i}: I feel tense about item {i}.",
             "output": f"Thanks for telling me about {i}. Try a slow breath."} for i in range(12)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    return folder


def _args(tiny_dir, rows_file, out, *extra):
    return ["--model", str(tiny_dir), "--data", str(rows_file / "train.jsonl"),
            "--eval-data", str(rows_file / "eval.jsonl"), "--out", str(out), "--max-len", "48",
            "--batch-size", "2", "--lr", "1e-2", "--warmup-steps", "1", "--max-steps", "2",
            "--eval-every", "1", "--save-every", "1", "--lora-dropout", "0.1", *extra]


def _losses(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _strip_speed(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def _adapter_matches_checkpoint(tiny_dir, out) -> bool:
    """The adapter on disk, loaded onto the base, holds exactly the checkpoint's LoRA tensors."""
    state = checkpoint.load(out)
    model = load_model(tiny_dir)
    load_adapter(model, out)
    params = dict(model.named_parameters())
    return all(torch.equal(params[name].detach(), tensor) for name, tensor in state["lora"].items())


class Killed(BaseException):
    """The process dying: no handler of train.py catches it, as none would run after a SIGKILL."""


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this calls os.mkdir(marker): code from the file runs
        return (os.mkdir, (str(self.marker),))


def _one_line_error(run) -> str:
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-2000:]
    return lines[0]


def test_resume_refuses_a_crafted_pickle_and_runs_none_of_it(tiny_dir, rows_file, tmp_path):
    marker, out = tmp_path / "pwned", tmp_path / "run"
    out.mkdir()
    torch.save({"step": 1, "payload": _Evil(marker)}, out / "checkpoint.pt")
    # The payload is live (read, never run): the pickle calls os.mkdir on the marker when loaded.
    with zipfile.ZipFile(out / "checkpoint.pt") as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert b"mkdir" in pickled and str(marker).encode() in pickled

    run = subprocess.run([sys.executable, "train.py", *_args(tiny_dir, rows_file, out), "--resume"],
                         capture_output=True, text=True, timeout=300)
    line = _one_line_error(run)
    assert str(out / "checkpoint.pt") in line and "refusing" in line
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_a_one_line_error_naming_the_file(tiny_dir, rows_file, tmp_path, damage):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out))
    path = out / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    run = subprocess.run([sys.executable, "train.py", *_args(tiny_dir, rows_file, out), "--resume"],
                         capture_output=True, text=True, timeout=300)
    line = _one_line_error(run)
    assert line.startswith("error: ") and str(path) in line and "damaged" in line


def test_every_tensor_of_a_saved_checkpoint_loads_with_weights_only(tiny_dir, rows_file, tmp_path):
    out = tmp_path / "run"
    train.main(_args(tiny_dir, rows_file, out))
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 2 and set(checkpoint.REQUIRED_KEYS) <= set(state)
    assert checkpoint.adapter_step(out) == 2 and _adapter_matches_checkpoint(tiny_dir, out)


@pytest.mark.slow
def test_a_save_killed_at_every_phase_leaves_a_folder_that_resumes_exactly(tiny_dir, rows_file, tmp_path,
                                                                          monkeypatch):
    """The fault hits the k-th file rename of the save at step `at` (k = 1, 2, ... until a save
    finishes untouched), and the temporary file being renamed is cut in half, as a write in flight
    would be. Then: checkpoint.pt is whole, state.json never vouches for an adapter that is not the
    checkpoint's, and --resume (or, with no checkpoint yet, a fresh start) ends where an
    uninterrupted run ends: the same metrics and the same adapter, and no temporary files."""
    whole = tmp_path / "whole"
    train.main(_args(tiny_dir, rows_file, whole))
    whole_metrics, whole_adapter = _strip_speed(_losses(whole)), load_file(whole / "adapter_model.safetensors")

    real_replace, real_save = os.replace, checkpoint.save
    phases_seen = {}
    for at in (1, 2):
        for k in range(1, 20):
            fault = {"armed": False, "n": 0, "fired": False}

            def replace(src, dst, fault=fault, k=k):
                if fault["armed"]:
                    fault["n"] += 1
                    if fault["n"] == k:
                        data = Path(src).read_bytes()
                        Path(src).write_bytes(data[: len(data) // 2])
                        fault["fired"] = True
                        raise Killed
                return real_replace(src, dst)

            def save(out, state, write_adapter, fault=fault, at=at):
                fault["armed"] = state["step"] == at
                return real_save(out, state, write_adapter)

            split = tmp_path / f"split-{at}-{k}"
            monkeypatch.setattr(os, "replace", replace)
            monkeypatch.setattr(checkpoint, "save", save)
            try:
                train.main(_args(tiny_dir, rows_file, split))
            except Killed:
                pass
            finally:
                monkeypatch.setattr(os, "replace", real_replace)
                monkeypatch.setattr(checkpoint, "save", real_save)
            if not fault["fired"]:
                phases_seen[at] = k - 1
                break

            where = f"save at step {at}, rename {k}"
            if (split / "checkpoint.pt").is_file():
                assert checkpoint.load(split)["step"] in (at - 1, at), where  # whole: old or new
                if checkpoint.adapter_step(split) == checkpoint.load(split)["step"]:
                    assert _adapter_matches_checkpoint(tiny_dir, split), where
                train.main(_args(tiny_dir, rows_file, split) + ["--resume"])
            else:  # killed before the first checkpoint landed: nothing to resume, start over
                assert at == 1, where
                with pytest.raises(UserError, match="no checkpoint"):
                    train.main(_args(tiny_dir, rows_file, split) + ["--resume"])
                train.main(_args(tiny_dir, rows_file, split))
            assert _strip_speed(_losses(split)) == whole_metrics, where
            adapter = load_file(split / "adapter_model.safetensors")
            assert adapter.keys() == whole_adapter.keys(), where
            assert all(torch.equal(adapter[n], whole_adapter[n]) for n in adapter), where
            assert checkpoint.adapter_step(split) == 2 and _adapter_matches_checkpoint(tiny_dir, split), where
            assert not list(split.glob("*.tmp")), where
    # checkpoint.pt, the adapter's weights and config, state.json: at least four renames a save.
    assert phases_seen[1] >= 4 and phases_seen[2] >= 4, phases_seen


def test_resume_rewrites_an_adapter_older_than_the_checkpoint(tiny_dir, rows_file, tmp_path, capsys):
    """The reported case: the checkpoint reached step 2, the adapter on disk is still step 1."""
    out, old = tmp_path / "run", tmp_path / "step1"
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "1"))
    old.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "state.json"):
        old.joinpath(name).write_bytes((out / name).read_bytes())
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2") + ["--resume"])
    for name in ("adapter_model.safetensors", "state.json"):  # as if killed between checkpoint and adapter
        (out / name).write_bytes((old / name).read_bytes())
    assert not _adapter_matches_checkpoint(tiny_dir, out)
    capsys.readouterr()
    train.main(_args(tiny_dir, rows_file, out, "--max-steps", "2") + ["--resume"])
    assert "rewrote the adapter" in capsys.readouterr().out
    assert checkpoint.adapter_step(out) == 2 and _adapter_matches_checkpoint(tiny_dir, out)


def test_adamw8bit_state_round_trips_through_a_weights_only_checkpoint(tiny_dir, rows_file, tmp_path, monkeypatch):
    """bitsandbytes' 8-bit optimizer state (uint8 moments, their absmax and maps) is tensors and
    plain values: a run stopped after step 1 and resumed ends like an uninterrupted one."""
    pytest.importorskip("bitsandbytes")
    extra = ["--optim", "adamw8bit", "--lora-r", "128"]  # r=128: LoRA matrices of 4096+ values get 8-bit state
    whole, split = tmp_path / "whole", tmp_path / "split"
    train.main(_args(tiny_dir, rows_file, whole, *extra))
    real_write = train._write_metrics

    def write_then_die(path, records, append=False):
        real_write(path, records, append)
        if any(r.get("step") == 2 for r in records) and append:  # step 2 done, not yet saved
            raise Killed

    monkeypatch.setattr(train, "_write_metrics", write_then_die)
    with pytest.raises(Killed):
        train.main(_args(tiny_dir, rows_file, split, *extra))
    monkeypatch.setattr(train, "_write_metrics", real_write)
    state = torch.load(split / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1
    assert any(t.dtype == torch.uint8 for s in state["optimizer"]["state"].values()
               for t in _tensors(s)), "no 8-bit state was saved"
    train.main(_args(tiny_dir, rows_file, split, *extra) + ["--resume"])
    assert _strip_speed(_losses(split)) == _strip_speed(_losses(whole))


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)


def test_an_enabled_grad_scaler_and_the_rng_states_load_with_weights_only(tmp_path):
    """The float16 path's GradScaler (enabled on CUDA; the CPU one has the same state) and
    Python's random state (a tuple of ints) are plain values."""
    import random
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler.scale(w.sum()).backward()
    scaler.step(opt)
    scaler.update()
    saved = {"scaler": scaler.state_dict(), "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}
    torch.save(saved, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)
    assert loaded["scaler"] == saved["scaler"] and loaded["scaler"]["scale"] == 1024.0
    assert loaded["rng"]["python"] == saved["rng"]["python"]


def test_only_the_run_folders_own_temporary_files_are_removed(tmp_path):
    for name in ("checkpoint.pt.tmp", "state.json.tmp", "adapter_model.safetensors.tmp", "notes.tmp"):
        (tmp_path / name).write_text("x")
    removed = checkpoint.remove_stale_tmp(tmp_path)
    assert sorted(removed) == ["adapter_model.safetensors.tmp", "checkpoint.pt.tmp", "state.json.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.tmp"]  # --out may hold the user's own files
