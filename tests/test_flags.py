"""One dataclass config per script (training/flags.py): --help shows the value a run uses and
where it came from, for train.py, generate.py and evaluate.py alike."""

import dataclasses
import re

import pytest

import evaluate
import generate
from training.flags import opt, parse_config


def help_entries(capsys) -> dict[str, tuple[str, str]]:
    """{flag: (value, source)} from --help's "(this run: VALUE, from SOURCE)"."""
    entries, out = [], capsys.readouterr().out.splitlines()
    for line in out:
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    shown = {}
    for entry in entries:
        found = re.search(r"\(this run: (.*), from (.*)\)$", entry)
        if found:
            shown[entry.split()[0].rstrip(",")] = found.groups()
    return shown


def as_shown(value) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("script", [generate, evaluate], ids=["generate", "evaluate"])
def test_help_shows_every_flag_with_the_value_a_plain_run_uses(script, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.delenv("LLAMACARE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    shown = help_entries(capsys)
    cfg = script.parse_args([])
    for f in dataclasses.fields(cfg):
        flag = "--" + f.name.replace("_", "-")
        assert shown[flag] == (as_shown(getattr(cfg, f.name)), "the default"), flag
    assert len(shown) == len(dataclasses.fields(cfg))


def test_a_flag_given_is_named_as_the_source_and_wins(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        generate.parse_args(["--temperature", "0.7", "--no-chat", "--help"])
    shown = help_entries(capsys)
    assert shown["--temperature"] == ("0.7", "--temperature")
    assert shown["--chat"] == ("false", "--chat")
    assert shown["--top-k"] == ("0", "the default")
    cfg = generate.parse_args(["--temperature", "0.7", "--no-chat"])
    assert cfg.temperature == 0.7 and cfg.chat is False


def test_a_key_from_the_environment_is_used_but_never_printed(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("LLAMACARE_API_KEY", "sk-secret-123")
    with pytest.raises(SystemExit):
        generate.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "sk-secret-123" not in out
    assert "(this run: set, not shown, from $LLAMACARE_API_KEY)" in " ".join(out.split())
    assert generate.parse_args([]).api_key == "sk-secret-123"
    assert generate.parse_args(["--api-key", "other"]).api_key == "other"     # the flag wins
    monkeypatch.setenv("OPENAI_API_KEY", "sk-judge")
    assert evaluate.parse_args([]).judge_api_key == "sk-judge"


def test_nullable_fields_take_none_and_others_keep_the_text():
    cfg = evaluate.parse_args(["--model", "none", "--data", "", "--out", "none"])
    assert cfg.model is None and cfg.data is None and cfg.out == "none"
    assert generate.parse_args(["--system", ""]).system == ""          # '' means: no system prompt


def test_a_preset_sits_between_the_default_and_the_flag(capsys, monkeypatch):
    @dataclasses.dataclass
    class Config:
        steps: int = opt(10, "steps")
        lr: float = opt(0.1, "rate")
        name: str | None = opt(None, "a name", nullable=True)

    cfg, _ = parse_config(Config, ["--lr", "0.5"], preset={"steps": 20, "lr": 0.2}, preset_name="p")
    assert (cfg.steps, cfg.lr, cfg.name) == (20, 0.5, None)
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        parse_config(Config, ["--lr", "0.5", "--help"], preset={"steps": 20, "lr": 0.2}, preset_name="p")
    assert help_entries(capsys) == {"--steps": ("20", "preset p"), "--lr": ("0.5", "--lr"),
                                    "--name": ("none", "the default")}
