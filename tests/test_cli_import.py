"""generate.py and evaluate.py can be imported and driven in-process: no argv read at import."""

import importlib
import sys

import pytest

from model.errors import UserError


@pytest.mark.parametrize("name", ["generate", "evaluate"])
def test_import_does_not_read_the_command_line(name, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--no-such-flag"])
    module = importlib.reload(importlib.import_module(name))     # argparse would exit 2 here
    assert callable(module.main) and callable(module.parse_args)


def test_generate_main_takes_argv():
    import generate
    assert generate.parse_args(["--prompt", "hi", "--max-new-tokens", "5"]).max_new_tokens == 5
    with pytest.raises(UserError, match="--max-new-tokens"):
        generate.main(["--max-new-tokens", "0"])


def test_evaluate_main_takes_argv(tmp_path):
    import evaluate
    assert evaluate.parse_args(["--variants", "base", "--limit", "3"]).limit == 3
    with pytest.raises(UserError, match="--variants: 'nope'"):
        evaluate.main(["--variants", "nope", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("flags, flag", [
    (["--temperature", "-1"], "--temperature"), (["--temperature", "nan"], "--temperature"),
    (["--top-p", "2"], "--top-p"), (["--top-k", "-1"], "--top-k"), (["--dtype", "foo"], "--dtype"),
    (["--device", "foo"], "--device"), (["--locale", "XX"], "--locale"),
    (["--serve", "--port", "70000"], "--port"), (["--serve", "--max-connections", "0"], "--max-connections"),
    (["--serve", "--max-batch", "0"], "--max-batch"), (["--serve", "--max-context", "1"], "--max-context")])
def test_generate_bad_flag_values_are_one_line_errors_naming_the_flag(flags, flag):
    import generate
    with pytest.raises(UserError, match=f"^{flag}"):
        generate.main(["--prompt", "hi", *flags])


@pytest.mark.parametrize("flags, flag", [
    (["--limit", "0"], "--limit"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-0.5"], "--temperature"), (["--char-temperature", "0"], "--char-temperature"),
    (["--dtype", "int3"], "--dtype"), (["--device", "gpu"], "--device"), (["--judge"], "--judge")])
def test_evaluate_bad_flag_values_are_one_line_errors_naming_the_flag(flags, flag, tmp_path):
    import evaluate
    with pytest.raises(UserError, match=f"^{flag}"):
        evaluate.main(["--out", str(tmp_path / "o"), *flags])


def test_quantize_has_one_spelling_everywhere():
    """none | nf4 in train.py, generate.py, evaluate.py and the memory planner; None in code."""
    import evaluate
    import generate
    import train
    from tools.memory import build_parser
    from model.checkpoint.load import QUANTIZE, TRAIN_QUANTIZE, parse_quantize
    assert QUANTIZE == ("none", "nf4", "int4", "int8") and TRAIN_QUANTIZE == ("none", "nf4")
    assert [parse_quantize(v) for v in (None, "none", "nf4", "int4")] == [None, None, "nf4", "int4"]
    assert train.parse_args(["--quantize", "none"])[0].quantize is None
    assert train.parse_args(["--quantize", "nf4"])[0].quantize == "nf4"
    assert build_parser().parse_args(["--model", "x", "--quantize", "none"]).quantize == "none"
    for main in (generate.main, evaluate.main):
        with pytest.raises(UserError, match="^--quantize int3: choose none, nf4, int4 or int8$"):
            main(["--quantize", "int3"])
    with pytest.raises(UserError, match="^--quantize int4: choose none or nf4$"):     # inference only
        train.parse_args(["--quantize", "int4"])
    with pytest.raises(UserError, match="^--quantize None: choose none or nf4$"):
        train.parse_args(["--quantize", "None"])
