"""scripts/self_improve.py without a model: its --help, and which stages a folder still needs.

The loop itself (minutes of generation and training) is run by hand, not here.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from synth.examples import read_examples
from synth.scoring import parse_evaluation

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "self_improve.py"

spec = importlib.util.spec_from_file_location("self_improve", SCRIPT)
loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loop)

FLAGS = {"--out", "--n", "--max-tokens", "--threshold", "--max-rounds", "--seed", "--timeout",
         "--keep-unsafe", "--evaluator-examples", "--no-evaluator-examples", "--train-steps",
         "--eval-data", "--eval-limit", "--eval-max-new-tokens", "--threads", "--port"}


def write_lines(path: Path, records: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_help_lists_every_flag_with_its_help():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    actions = [a for a in loop.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert {s for a in actions for s in a.option_strings} == FLAGS
    assert all(a.help for a in actions)
    help_text = " ".join(result.stdout.split())  # argparse wraps long lines
    assert all(flag in help_text for flag in FLAGS)


def test_an_empty_folder_runs_every_stage(tmp_path):
    assert loop.stages_to_run(tmp_path, train_steps=10) == [
        "patients", "respond", "refine", "train", "evaluate"]


def test_stages_whose_output_exists_are_skipped(tmp_path):
    write_lines(tmp_path / "patients.jsonl", [{"id": "a"}])
    write_lines(tmp_path / "answers.jsonl", [{"id": "a"}])
    write_lines(tmp_path / "partial" / "refined.jsonl", [{"id": "a"}])  # refine was stopped
    assert loop.stages_to_run(tmp_path, train_steps=10) == ["refine", "train", "evaluate"]


def test_training_is_done_only_once_it_reached_the_asked_steps(tmp_path):
    run = tmp_path / "run"
    write_lines(run / "metrics.jsonl", [{"step": 0, "eval_loss": 2.5}, {"step": 1, "loss": 2.4}])
    (run / "adapter_model.safetensors").write_bytes(b"")  # saved when a Ctrl-C stopped it
    assert loop.stage_done("train", tmp_path, train_steps=10) is False
    write_lines(run / "metrics.jsonl", [{"step": 0, "eval_loss": 2.5}, {"step": 10, "eval_loss": 2.1}])
    assert loop.stage_done("train", tmp_path, train_steps=10) is True
    assert loop.stage_done("train", tmp_path, train_steps=20) is False  # more steps asked for now


def loop_args(*argv: str):
    return loop.build_parser().parse_args(list(argv))


def test_refine_passes_the_worked_examples_file_to_synth_and_talks_to_the_server_directly(
        tmp_path):
    cmd = loop.synth_command("refine", loop_args(), tmp_path, "http://127.0.0.1:8000")
    flag = cmd.index("--evaluator-examples")
    assert Path(cmd[flag + 1]) == ROOT / "synth" / "evaluator_examples.jsonl"
    assert cmd[cmd.index("--base-url") + 1] == "http://127.0.0.1:8000/v1"  # no proxy between
    assert "--evaluator-model" not in cmd  # the served model judges, under its own name


def test_no_evaluator_examples_leaves_the_flag_out(tmp_path):
    cmd = loop.synth_command("refine", loop_args("--no-evaluator-examples"), tmp_path,
                             "http://127.0.0.1:8000")
    assert "--evaluator-examples" not in cmd


def test_only_refine_gets_the_worked_examples(tmp_path):
    for stage in ("patients", "respond"):
        assert "--evaluator-examples" not in loop.synth_command(stage, loop_args(), tmp_path,
                                                                "http://127.0.0.1:8000")


def test_the_worked_examples_file_is_valid_and_its_scores_reach_the_summary():
    examples = read_examples(str(loop.EVALUATOR_EXAMPLES))
    assert len(examples) == 2
    assert loop.example_scores() == [parse_evaluation(e.verdict).score for e in examples] \
        == [30, 90]


def test_the_summary_names_the_scores_the_worked_examples_show(tmp_path):
    assert "(the worked examples show 30, 90)" in loop.summarize(tmp_path, 85.0, {})


def test_the_loops_own_server_ignores_a_users_api_key(tmp_path, monkeypatch):
    """synth sends no key to the loop's loopback server, so the server must not demand one."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_popen(cmd, **kwargs):
        seen["env"] = kwargs.get("env")
        raise Stop

    monkeypatch.setenv("LLAMACARE_API_KEY", "sk-users-own")
    monkeypatch.setattr(loop.subprocess, "Popen", fake_popen)
    try:
        with loop.model_server(0, 8, tmp_path / "server.log"):
            pass
    except Stop:
        pass
    assert seen["env"] is not None and "LLAMACARE_API_KEY" not in seen["env"]
    assert seen["env"].get("PATH") == loop.os.environ["PATH"]
