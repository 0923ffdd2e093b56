"""torchrun train.py --parallel ddp|fsdp on CPU (gloo): the same numbers as one process with the
same global batch, sharded 4-bit weights, resume on 2 ranks and from 2 ranks to 1, a dead rank.

Every torchrun here is --standalone (its own free port) and bounded by a timeout."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import train
from data.batches import Batcher, rank_share, shard_batch
from data.format import IGNORE_INDEX, Example
from model import UserError
from tests.helpers import tiny_model_with_smollm2_tokenizer
from tools.memory import MemoryPlanArgs, estimate, load_config
from training import checkpoint, distributed

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    return tiny_model_with_smollm2_tokenizer(tmp_path_factory.mktemp("tiny"), smollm2_dir)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """22 short rows of different lengths (a short last global batch), and 5 held out."""
    folder = tmp_path_factory.mktemp("rows")
    rows = [{"instruction": "Be kind.", "input": f"Message {i}: I feel tense" + " and tired" * (i % 4) + ".",
             "output": f"Thanks for telling me about {i}." + " Breathe slowly." * (i % 3)} for i in range(27)]
    with open(folder / "train.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:22])
    with open(folder / "eval.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[22:])
    return folder


def _args(tiny_dir, rows_file, out, batch_size, *extra):
    return ["--model", str(tiny_dir), "--data", str(rows_file / "train.jsonl"), "--eval-data",
            str(rows_file / "eval.jsonl"), "--out", str(out), "--max-len", "64", "--batch-size",
            str(batch_size), "--grad-accum", "2", "--lr", "1e-2", "--eval-every", "2", "--save-every", "1",
            "--warmup-steps", "1", "--device", "cpu", *extra]


def _torchrun(args, timeout=240, script="train.py"):
    return subprocess.run([*TORCHRUN, str(ROOT / script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _curve(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval_loss"), r.get("target_tokens")) for r in rows]


def _same_curve(a, b, tol=3e-5):
    assert [r[0] for r in a] == [r[0] for r in b]
    for x, y in zip(a, b):
        assert x[3] == y[3], (x, y)      # the same target tokens in every step
        for u, v in zip(x[1:3], y[1:3]):
            assert (u is None) == (v is None) and (u is None or abs(u - v) <= tol), (x, y)


def _max_diff(a_dir, b_dir):
    a, b = load_file(a_dir / "adapter_model.safetensors"), load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ----------------------------------------------------------------------------- data shares
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("group", [False, True])
def test_rank_shares_are_disjoint_and_make_up_the_global_batch(world_size, group):
    examples = [Example(list(range(3, 5 + i % 7)), [IGNORE_INDEX] + list(range(4, 5 + i % 7))) for i in range(23)]
    whole = Batcher(examples, 2 * world_size, pad_id=0, seed=4, group_by_length=group)
    ranks = [Batcher(examples, 2, pad_id=0, seed=4, group_by_length=group, rank=r, world_size=world_size)
             for r in range(world_size)]
    for _ in range(2 * len(whole) + 1):   # past an epoch's short last batch
        expected = next(whole)
        shares = [next(b) for b in ranks]
        real = [s for s in shares if (s["labels"] != IGNORE_INDEX).any()]   # padding-only rows aside
        rows = [row[row != 0].tolist() for s in real for row in s["input_ids"]]
        assert rows == [row[row != 0].tolist() for row in expected["input_ids"]]
        assert all(b.state_dict() == whole.state_dict() for b in ranks)   # one global position


def test_a_rank_left_without_rows_gets_one_padding_row_with_no_targets():
    assert rank_share([7, 8, 9], 0, 2) == [7, 8] and rank_share([7, 8, 9], 1, 2) == [9]
    assert rank_share([7], 1, 2) == []
    batch = shard_batch([Example([5, 6], [5, 6])], [0], pad_id=0, rank=1, world_size=2)
    assert batch["input_ids"].tolist() == [[0, 0]] and (batch["labels"] == IGNORE_INDEX).all()


# ----------------------------------------------------------------------------- flags
def test_parallel_flags_fail_in_one_line(tmp_path, monkeypatch):
    for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="--parallel ddp runs under torchrun"):
        distributed.setup("ddp", "cpu", 60)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="torchrun started 2 processes but --parallel is none"):
        distributed.setup("none", "cpu", 60)
    for extra, message in ((["--cpu-offload"], "--cpu-offload: only with --parallel fsdp"),
                           (["--parallel", "fsdp", "--optim", "adamw8bit"], "--optim adamw8bit: not with --parallel fsdp"),
                           (["--parallel", "mpi"], "--parallel mpi: choose one of none, ddp, fsdp")):
        with pytest.raises(UserError, match=message):
            train.main(["--out", str(tmp_path / "x"), *extra])


# ----------------------------------------------------------------------------- DCP metadata
class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_sharded_optimizer_metadata_that_names_code_is_refused_not_run(tmp_path):
    folder = tmp_path / "optimizer-step1"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(UserError, match="holds Python objects besides DCP's metadata"):
        checkpoint.SafeReader(folder).read_metadata()
    assert not (Path.cwd() / "pwned").exists() and not (folder / "pwned").exists()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.slow
def test_two_ranks_give_one_process_gradients_and_fsdp_halves_the_4bit_weights(tiny_dir, tmp_path):
    """2 ranks x micro-batch share x 2 accumulation = one process with the global batch: the loss
    and every LoRA gradient, for DDP and FSDP2 (also with CPU offload), float32 and NF4."""
    one, two, offload = tmp_path / "one", tmp_path / "two", tmp_path / "offload"
    for d in (one, two, offload):
        d.mkdir()
    worker = [str(ROOT / "tests" / "dist_worker.py"), "--model", str(tiny_dir)]
    subprocess.run([sys.executable, *worker, "--out", str(one), "--parallel", "none"], check=True, env=ENV,
                   timeout=120, capture_output=True)
    for folder, extra in ((two, []), (offload, ["--parallel", "fsdp", "--cpu-offload"])):
        r = _torchrun(["--model", str(tiny_dir), "--out", str(folder), *extra], script="tests/dist_worker.py")
        assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads((one / "results.json").read_text())
    got = {**json.loads((two / "results.json").read_text()),
           **{f"{k}-offload": v for k, v in json.loads((offload / "results.json").read_text()).items()}}
    assert len(got) == 6
    for name, result in got.items():
        quantize = name.split("-")[1]
        base = ref[f"none-{quantize}"]
        assert result["n_targets"] == base["n_targets"]
        assert abs(result["loss"] - base["loss"]) < 1e-5, name
        a = load_file(one / f"none-{quantize}.safetensors")
        b = load_file((offload if name.endswith("offload") else two) / f"{name.removesuffix('-offload')}.safetensors")
        assert a.keys() == b.keys() and len(a) == 2 * 7 * 2   # A and B of 7 linears in 2 blocks
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, name
        assert max(float(a[k].abs().max()) for k in a) > 1e-3          # not trivially zero
    # FSDP: each rank holds about half of the 4-bit weights (packed bytes and their absmax) and of
    # all frozen base bytes; DDP holds all of them on both ranks.
    fsdp, ddp = got["fsdp-nf4"], got["ddp-nf4"]
    for rank in (0, 1):
        assert abs(fsdp[f"nf4_bytes_rank{rank}"] - fsdp["nf4_total_bytes"] / 2) <= 0.02 * fsdp["nf4_total_bytes"]
        # what stays whole on every rank: NF4's code tables (1.3 KB a matrix) and rope's inv_freq
        replicated = 14 * (16 * 4 + 256 * 4 + 4) + 8 * 4
        assert abs(fsdp[f"base_bytes_rank{rank}"] - (fsdp["base_total_bytes"] - replicated) / 2 - replicated) \
            <= 0.01 * fsdp["base_total_bytes"]
        assert ddp[f"nf4_bytes_rank{rank}"] == ddp["nf4_total_bytes"] > 0


@pytest.mark.slow
def test_fsdp_shards_each_block_as_it_loads_so_no_rank_holds_the_whole_model(tiny_dir, tmp_path):
    """train.py's FSDP load: when a block has been read, the rank holds the shards of the blocks
    before it plus this one whole block, nothing more (the root and later blocks are not read
    yet), and sharding it keeps half of it. Before, each rank loaded the whole model first."""
    r = _torchrun(["--model", str(tiny_dir), "--out", str(tmp_path)], script="tests/dist_load_worker.py")
    assert r.returncode == 0, r.stderr[-3000:]
    codes = 7 * (16 * 4 + 256 * 4 + 4)   # each NF4 matrix's code tables stay whole on every rank
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        calls = seen["calls"]
        assert len(calls) == 2                                   # the tiny model's blocks, in order
        held = 0
        for call in calls:
            assert call["before"] == held + call["block"]        # shards so far + the block in hand
            kept = call["after"] - held
            assert abs(kept - ((call["block"] - codes) / 2 + codes)) <= 0.01 * call["block"]
            held = call["after"]
        assert max(c["before"] for c in calls) < seen["blocks"] < seen["whole"]
        # then the root (embedding, norm) is read whole next to the block shards: the planner's
        # figure for this shape (on a CPU the shards stay in CPU RAM, as with --cpu-offload)
        peak = max(seen["before_root_sharded"], *(c["before"] for c in calls))
        assert seen["before_root_sharded"] > held
        config = load_config(str(tiny_dir))[0]
        plan = estimate(config, MemoryPlanArgs(lora_r=4, dtype="float32", nproc=2, parallel="fsdp",
                                               cpu_offload=True, optim="adamw"))
        assert abs(plan.loading - peak) <= 0.01 * peak, (plan.loading, peak)


# ----------------------------------------------------------------------------- train.py end to end
@pytest.mark.slow
@pytest.mark.parametrize("parallel,extra", [("ddp", []), ("fsdp", ["--quantize", "nf4", "--grad-checkpointing"])])
def test_train_on_two_ranks_matches_one_process(tiny_dir, rows_file, tmp_path, parallel, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    train.main(_args(tiny_dir, rows_file, one, 4, "--max-steps", "3", *extra))
    r = _torchrun(_args(tiny_dir, rows_file, two, 2, "--max-steps", "3", "--parallel", parallel, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 2 x 2 ranks x 2 accumulation = 8 examples" in r.stdout
    _same_curve(_curve(one), _curve(two))
    assert _max_diff(one, two) < 1e-5                          # the adapters after 3 optimizer steps
    assert json.loads((two / "adapter_config.json").read_text()) == json.loads((one / "adapter_config.json").read_text())
    assert sorted(p.name for p in two.glob("optimizer-step*")) == ["optimizer-step3"]


@pytest.mark.slow
def test_ctrl_c_on_two_ranks_then_resume_on_two_and_on_one(tiny_dir, rows_file, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = lambda out, bs, *more: _args(tiny_dir, rows_file, out, bs, "--max-steps", "6", "--parallel", "fsdp",  # noqa: E731
                                        "--quantize", "nf4", *more)
    r = _torchrun(args(whole, 2))
    assert r.returncode == 0, r.stderr[-3000:]

    proc = subprocess.Popen([*TORCHRUN, str(ROOT / "train.py"), *args(cut, 2)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and checkpoint.adapter_step(cut) is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)          # torchrun passes it to every rank
    _, err = proc.communicate(timeout=120)
    saved = checkpoint.load(cut)["step"]
    assert 1 <= saved < 6, err[-2000:]
    assert "interrupted: saved step" in err
    on_one = tmp_path / "on-one"
    shutil.copytree(cut, on_one)

    r = _torchrun(args(cut, 2, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    _same_curve(_curve(cut), _curve(whole))
    assert _max_diff(cut, whole) < 1e-5

    # the same checkpoint, resumed by one process with the same global batch (4 x 1 rank)
    one_args = [a for a in args(on_one, 4, "--resume") if a not in ("--parallel", "fsdp")]
    train.main(one_args)
    _same_curve(_curve(on_one), _curve(whole))
    assert _max_diff(on_one, whole) < 1e-5


@pytest.mark.slow
def test_a_dead_rank_stops_the_other_with_a_message(tiny_dir, rows_file, tmp_path):
    proc = subprocess.Popen([*TORCHRUN, str(ROOT / "train.py"),
                             *_args(tiny_dir, rows_file, tmp_path / "run", 2, "--max-steps", "100000",
                                    "--parallel", "ddp", "--save-every", "0", "--eval-every", "0")],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, victim = time.time() + 120, None
        while time.time() < deadline and victim is None:
            time.sleep(0.2)
            if (tmp_path / "run" / "metrics.jsonl").is_file() and (tmp_path / "run" / "metrics.jsonl").stat().st_size:
                victim = _rank_pid(proc.pid, rank=1)
        assert victim is not None, "training never started"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=90)     # torchrun notices, stops rank 0 and exits
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert ("rank 0: stopped by torchrun (SIGTERM)" in err
            or "error: rank 0: lost contact with another rank (" in err), err[-3000:]


def _rank_pid(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (read from /proc)."""
    children = Path(f"/proc/{agent_pid}/task/{agent_pid}/children")
    if not children.is_file():
        pytest.skip("needs Linux /proc to find a rank's pid")
    for pid in children.read_text().split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_fsdp_ranks(tiny_dir, rows_file, tmp_path):
    """Also: a run trained further with a higher --max-steps follows the new schedule from its
    next step (the saved learning rate was the old schedule's)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train.main(_args(tiny_dir, rows_file, whole, 4, "--max-steps", "4"))
    train.main(_args(tiny_dir, rows_file, cut, 4, "--max-steps", "2"))
    r = _torchrun(_args(tiny_dir, rows_file, cut, 2, "--max-steps", "4", "--parallel", "fsdp", "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 2" in r.stdout
    _same_curve(_curve(cut), _curve(whole))
    assert _max_diff(cut, whole) < 1e-5
