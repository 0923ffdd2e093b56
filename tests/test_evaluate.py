"""evaluate.py end to end on a tiny model: every output file, every variant kind, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_model_with_smollm2_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("eval")
    tiny = tiny_model_with_smollm2_tokenizer(root / "tiny", smollm2_dir)
    rows = [{"instruction": "Be kind.", "input": f"I worry about thing {i} every night.",
             "output": f"Worry about {i} at night is hard. Try writing it down before bed."} for i in range(9)]
    data, train_rows = root / "rows.jsonl", root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    train_rows.write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))
    common = ["--model", str(tiny), "--data", str(train_rows), "--eval-data", str(data), "--max-len", "64",
              "--batch-size", "2", "--eval-every", "0", "--save-every", "0"]
    import train
    train.main(common + ["--out", str(root / "lora"), "--max-steps", "2"])
    train.main(common + ["--out", str(root / "lstm"), "--arch", "lstm", "--char-steps", "5", "--char-hidden", "16"])
    return root, tiny, data


def _evaluate(*argv):
    return subprocess.run([sys.executable, "evaluate.py", *argv], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_evaluate_writes_every_output_for_base_lora_and_char_variants(setup):
    root, tiny, data = setup
    out = root / "out"
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants",
                    f"base,{root / 'lora'},{root / 'lstm'}", "--max-new-tokens", "6", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("results.md", "results.csv", "results.json", "chart.png", "examples.jsonl"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in results] == ["base", "lora", "lstm"]
    assert [r["kind"] for r in results] == ["base", "lora", "lstm"]
    for r in results:
        assert 0.0 <= r["mrr"] <= 1.0 and 0.0 <= r["flagged"] <= 1.0 and -1.0 <= r["sts"] <= 1.0
    assert results[0]["ppl"] > 1 and results[2]["bits_per_char"] > 0 and results[2]["ppl"] is None
    examples = [json.loads(l) for l in (out / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 3 * 3
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + 3 and "| lstm |" in table


@pytest.mark.slow
def test_evaluate_is_deterministic_under_a_seed(setup):
    root, tiny, data = setup
    outs = []
    for name in ("a", "b"):
        run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", "base",
                        "--temperature", "0.9", "--seed", "5", "--max-new-tokens", "6", "--out", str(root / name))
        assert run.returncode == 0, run.stderr[-2000:]
        outs.append((root / name / "examples.jsonl").read_text())
    assert outs[0] == outs[1]


def test_missing_adapter_is_a_one_line_error(setup, tmp_path):
    root, tiny, data = setup
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", f"base,{tmp_path / 'nope'}")
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0]


@pytest.mark.slow
def test_eval_rows_with_missing_fields_are_skipped_and_counted(setup):
    root, tiny, data = setup
    bad = root / "bad.jsonl"
    bad.write_text(data.read_text() + json.dumps({"instruction": "x", "input": "only input"}) + "\n")
    run = _evaluate("--model", str(tiny), "--data", str(bad), "--variants", "base",
                    "--max-new-tokens", "4", "--out", str(root / "bad_out"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "skipped 1" in run.stdout or "1 skipped" in run.stdout


def test_judge_that_is_down_is_reported_and_other_metrics_still_come(setup):
    root, tiny, data = setup
    out = root / "judged"
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", "base", "--max-new-tokens", "4",
                    "--judge", "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "m", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "judge: 0/3 scored" in run.stdout and "cannot reach the judge" in run.stdout
    result = json.loads((out / "results.json").read_text())[0]
    assert result["judge"] is None and result["sts"] is not None


@pytest.mark.slow
def test_evaluate_ends_by_naming_every_file_it_wrote(setup):
    root, tiny, data = setup
    out = root / "named"
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", "base", "--max-new-tokens", "4",
                    "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    tail = run.stdout[run.stdout.rindex(f"results in {out}:"):]
    named = [Path(p) for p in re.findall(re.escape(str(out)) + r"/[\w.\-]+", tail)]
    assert {p.name for p in named} == {"results.md", "results.csv", "results.json", "chart.png", "examples.jsonl"}
    assert all(p.is_file() for p in named)


def test_a_variant_folder_nobody_trained_is_one_line_and_leaves_no_results_folder(setup, tmp_path):
    root, tiny, data = setup
    out = tmp_path / "results"
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", f"base,{tmp_path / 'runs' / 'lstm'}",
                    "--out", str(out))
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{tmp_path / 'runs' / 'lstm'}' is neither 'base' nor a run folder" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_with_int8_weights_merges_each_adapter_first(setup):
    root, tiny, data = setup
    out = root / "out-int8"
    run = _evaluate("--model", str(tiny), "--data", str(data), "--variants", f"base,{root / 'lora'}",
                    "--max-new-tokens", "4", "--quantize", "int8", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["kind"] for r in results] == ["base", "lora"] and all(r["ppl"] > 1 for r in results)


@pytest.mark.slow
def test_a_lora_run_is_evaluated_on_the_base_it_was_trained_on(setup, tmp_path):
    # without --model, the run's train_config.json names the base; before, the embedded SmolLM2
    # was loaded and the tiny run's adapter did not fit it
    root, tiny, data = setup
    args = ["--data", str(data), "--variants", f"base,{root / 'lora'}", "--limit", "1", "--max-new-tokens", "2"]
    followed = _evaluate(*args, "--out", str(tmp_path / "followed"))
    assert followed.returncode == 0, followed.stderr[-2000:]
    assert f"--model {tiny}" in followed.stderr
    named = _evaluate(*args, "--model", str(tiny), "--out", str(tmp_path / "named"))
    assert named.returncode == 0, named.stderr[-2000:]
    ppl = [[r["ppl"] for r in json.loads((tmp_path / name / "results.json").read_text())]
           for name in ("followed", "named")]
    assert ppl[0] == ppl[1]


def _lora_run(folder: Path, **flags) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "train_config.json").write_text(json.dumps({"template": "chat", **flags}))
    return str(folder)


def test_runs_supply_the_base_and_nf4_unless_flags_are_given(tmp_path, capsys):
    import evaluate
    a = _lora_run(tmp_path / "a", model="meta-llama/Meta-Llama-3-8B", quantize="nf4")
    b = _lora_run(tmp_path / "b", model="meta-llama/Meta-Llama-3-8B", quantize="nf4")
    args = evaluate.parse_args(["--variants", f"base,{a},{b}"])
    evaluate.follow_the_runs(args, evaluate.parse_variants(args.variants))
    assert (args.model, args.quantize) == ("meta-llama/Meta-Llama-3-8B", "nf4")
    assert "--model meta-llama/Meta-Llama-3-8B --quantize nf4" in capsys.readouterr().err
    # flags given on the command line win, an explicit --quantize none included
    args = evaluate.parse_args(["--variants", f"{a},{b}", "--model", "m", "--quantize", "none"])
    evaluate.follow_the_runs(args, evaluate.parse_variants(args.variants))
    assert (args.model, args.quantize) == ("m", "none")
    # one run on a dense base: the variants keep the dense base
    c = _lora_run(tmp_path / "c", model="meta-llama/Meta-Llama-3-8B", quantize=None)
    args = evaluate.parse_args(["--variants", f"{a},{c}"])
    evaluate.follow_the_runs(args, evaluate.parse_variants(args.variants))
    assert (args.model, args.quantize) == ("meta-llama/Meta-Llama-3-8B", None)


def test_runs_on_different_bases_are_one_line_error_naming_them(tmp_path):
    import evaluate
    from model.errors import UserError
    a = _lora_run(tmp_path / "a", model="meta-llama/Meta-Llama-3-8B")
    b = _lora_run(tmp_path / "b", model=None)
    args = evaluate.parse_args(["--variants", f"base,{a},{b}"])
    with pytest.raises(UserError) as e:
        evaluate.follow_the_runs(args, evaluate.parse_variants(args.variants))
    assert "\n" not in str(e.value) and a in str(e.value) and b in str(e.value) and "--model" in str(e.value)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_broken_train_config_is_one_line_naming_it(tmp_path, text):
    import evaluate
    import generate
    from model.errors import UserError
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    (run / "train_config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as e:
        evaluate.parse_variants(str(run))
    assert "\n" not in str(e.value) and str(run / "train_config.json") in str(e.value)
    with pytest.raises(UserError) as e:
        generate.follow_the_run(generate.parse_args(["--adapter", str(run)]))
    assert "\n" not in str(e.value) and str(run / "train_config.json") in str(e.value)
