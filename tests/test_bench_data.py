"""bench/bench_data.py: answers --help, and its generated files hold what it reports."""

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_data.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_data_help_lists_its_flags():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--sizes", "--max-len", "--big-mb", "--bad-every", "--workdir", "--json"):
        assert flag in out.stdout, flag


def test_bench_data_child_counts_what_the_generated_file_holds(tmp_path):
    bench = load_bench()
    path = tmp_path / "rows.jsonl"
    made = bench.write_file(path, size=400_000, big_chars=50_000, bad_every=40, seed=0)
    assert made["big_rows"] >= 2 and made["malformed"] >= 2 and made["not_utf8"] >= 2
    got = bench.child(bench.parse_args(["--child", str(path), "--max-len", "64"]))
    assert (got["malformed"], got["not_utf8"]) == (made["malformed"], made["not_utf8"])
    assert got["kept"] == made["lines"] - made["malformed"] - made["not_utf8"]
    assert got["capped"] == made["big_rows"]  # 50,000 characters > field_char_limit(64)
    assert got["examples"] == got["kept"]


def test_bench_data_reference_side_keeps_the_same_rows_and_tokens(tmp_path):
    """The straightforward loader the bench compares against does the same work as ours."""
    bench = load_bench()
    path = tmp_path / "rows.jsonl"
    bench.write_file(path, size=300_000, big_chars=40_000, bad_every=40, seed=1)
    ours = bench.child(bench.parse_args(["--child", str(path), "--max-len", "64"]))
    naive = bench.child(bench.parse_args(["--child", f"naive:{path}", "--max-len", "64"]))
    assert (naive["kept"], naive["examples"], naive["tokens"]) == (ours["kept"], ours["examples"], ours["tokens"])
