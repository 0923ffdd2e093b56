"""scripts/self_improve.py without a model: its --help, and which stages a folder still needs.

The loop itself (minutes of generation and training) is run by hand, not here.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

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


def test_evaluator_requests_get_the_worked_examples_between_system_and_message():
    messages = [{"role": "system", "content": "judge"}, {"role": "user", "content": "the answer"}]
    shown = loop.with_examples(messages)
    assert shown[0] == messages[0] and shown[-1] == messages[1]
    assert [m["role"] for m in shown[1:-1]] == ["user", "assistant"] * len(loop.EVALUATOR_EXAMPLES)
    # each worked verdict is one synth's own parser reads, with the example's score
    scores = [parse_evaluation(m["content"]).score for m in shown[2:-1:2]]
    assert scores == [verdict["score"] for _, _, verdict in loop.EVALUATOR_EXAMPLES]
