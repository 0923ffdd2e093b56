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
