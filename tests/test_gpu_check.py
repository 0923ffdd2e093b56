"""tools/gpu_check.py: its CPU path (no GPU: say so, exit 0), its table, and the checks it runs,
exercised on a CPU with the tiny shape; and the mixed-precision training step it relies on
(training/step.py), bf16 autocast and fp16 with a GradScaler, on a CPU."""

import copy

import pytest
import torch

from lora import LoRAConfig, inject
from model.loss import TargetLoss
from tools import gpu_check
from tools.gpu_check import Check, exit_code, format_table
from training.step import make_optimizer, make_scaler, train_step


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No CUDA GPU is visible to PyTorch") and "nothing to check" in out
    assert out.count("\n") == 1


def test_the_table_lines_up_and_a_failure_is_exit_1():
    checks = [Check("gpu", "ok", "Tesla T4, 15.0 GiB"), Check("nf4 matmul", "FAIL", "difference 2.0e-02"),
              Check("peak memory", "skip", "only measured on a GPU")]
    assert format_table(checks) == (
        "check        result  detail\n"
        "-----------  ------  ------\n"
        "gpu          ok      Tesla T4, 15.0 GiB\n"
        "nf4 matmul   FAIL    difference 2.0e-02\n"
        "peak memory  skip    only measured on a GPU")
    assert exit_code(checks) == 1
    assert exit_code([Check("gpu", "ok", ""), Check("peak memory", "warn", "")]) == 0


def test_the_checks_run_on_a_cpu_with_the_tiny_shape(capsys):
    assert gpu_check.main(["--shape", "tiny", "--device", "cpu", "--seq-len", "32", "--steps", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:5]] == ["nf4", "train", "peak"]
    assert "ok" in out[2] and "ok" in out[3] and "skip" in out[4]


def test_memory_check_compares_with_the_planner_less_the_cuda_context():
    from tools.memory import CUDA_CONTEXT_GIB, MemoryPlanArgs, estimate
    config = gpu_check.shape_config("llama3-8b", layers=32)
    planned = estimate(config, MemoryPlanArgs(seq_len=512, batch_size=2, grad_checkpointing=True,
                                              dtype="float16")).total - CUDA_CONTEXT_GIB * 1024**3
    ok = gpu_check.memory_check(config, int(planned * 1.1), torch.float16, 512, 2, "adamw8bit", 15 * 1024**3)
    high = gpu_check.memory_check(config, int(planned * 1.3), torch.float16, 512, 2, "adamw8bit", 15 * 1024**3)
    assert ok.status == "ok" and "(1.10x)" in ok.detail
    assert high.status == "warn" and "(1.30x)" in high.detail


def test_layers_out_of_range_is_a_one_line_error():
    from model import UserError
    with pytest.raises(UserError, match="--layers 40: the llama3-8b shape has 1 to 32 blocks"):
        gpu_check.shape_config("llama3-8b", layers=40)


# ----------------------------------------------------------------------------- mixed precision
@pytest.fixture(scope="module")
def tiny_lora():
    model = gpu_check.random_nf4_llama(gpu_check.shape_config("tiny"), torch.float32, "cpu", seed=0)
    torch.manual_seed(0)
    inject(model, LoRAConfig(r=8, alpha=16))
    with torch.no_grad():   # a non-zero B, so that A gets a gradient too
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.02)
    return model


def _one_step(model, dtype, amp, scaler_on):
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer("adamw", params, lr=1e-3, weight_decay=0.0)
    scaler = make_scaler(scaler_on, device_type="cpu")
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    loss, _, norm = train_step(TargetLoss(model), [{"input_ids": ids, "labels": ids}], params, optimizer,
                               scaler, 1e9, torch.device("cpu"), dtype, amp)
    return loss, norm, scaler


@pytest.mark.parametrize("dtype, scaled", [(torch.bfloat16, False), (torch.float16, True)])
def test_a_mixed_precision_step_matches_float32_within_rounding(tiny_lora, dtype, scaled):
    """Autocast on a CPU runs the same code path as on a GPU: the loss and the gradient norm (taken
    after the GradScaler unscaled it) agree with float32 to the dtype's rounding."""
    loss32, norm32, _ = _one_step(tiny_lora, torch.float32, amp=False, scaler_on=False)
    loss, norm, scaler = _one_step(tiny_lora, dtype, amp=True, scaler_on=scaled)
    assert abs(loss - loss32) < 0.02 * loss32
    assert abs(norm - norm32) < 0.05 * norm32             # unscaled: not 65536 times larger
    if scaled:
        assert scaler.get_scale() == 65536.0               # no overflow, so the step was taken
