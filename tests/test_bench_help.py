"""bench/: every script explains its flags with --help (they are never timed in tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, flags", [
    ("bench_generate.py", ["--new-tokens", "--repeats", "--dtype", "--profile", "--quantized", "--no-ppl"]),
    ("bench_serve.py", ["--requests", "--max-tokens", "--max-batch", "--quantize", "--json"]),
    ("bench_train.py", ["--max-len", "--steps", "--rss-repeats", "--no-rss"]),
    ("bench_linear4bit.py", ["--repeats"]),
    ("bench_gpu.py", ["--shape", "--parts", "--recipe-seq-len", "--optim", "--workdir"]),
    ("bench_distributed.py", ["--nproc", "--variants", "--batch-size", "--steps", "--gpu", "--json"]),
    ("bench_safety.py", ["--sets", "--repeats", "--warmup", "--file", "--batch-size", "--threads",
                         "--json"]),
])
def test_bench_script_help_lists_its_flags(script, flags):
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in flags:
        assert flag in out.stdout, (script, flag)
