"""A script's flags, made from its one dataclass config.

    @dataclass
    class GenerateConfig:
        max_new_tokens: int = opt(256, "most tokens to generate per answer")

    cfg, extra = parse_config(GenerateConfig, argv, description=__doc__)

Every field becomes a flag (max_new_tokens -> --max-new-tokens; a bool -> --name / --no-name),
with its help text written beside the field. The value a run uses comes from, in order: the
flag, the preset (train.py's --config), an environment variable the field names, the field's
default. --help prints that value and where it came from, so what it says is what a run does:

    --lora-alpha LORA_ALPHA   LoRA alpha (the update is scaled by alpha / r) (this run: 32, from preset cpu-smollm2)
"""

import argparse
import dataclasses
import os
import types
from dataclasses import field

NONE_WORDS = ("", "none", "None")   # what a flag gives to set a nullable field to None


def opt(default, help: str, *, choices: tuple | None = None, nullable: bool = False,
        env: str | None = None, secret: bool = False):
    """A config field with its --help text. choices: the values the flag accepts; nullable:
    "none" (or "") sets it to None; env: a variable read when neither flag nor preset sets it;
    secret: --help never prints the value."""
    return field(default=default, metadata={"help": help, "choices": choices, "nullable": nullable,
                                            "env": env, "secret": secret})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_config(cls, argv=None, *, description: str = "", preset: dict | None = None,
                 preset_name: str | None = None, extra_flags=None):
    """(cls(**values), the argparse namespace) for a command line. extra_flags(parser) adds
    flags that are not config fields (train.py's --config and --resume); they land in the
    namespace only."""
    preset = preset or {}
    # A first pass with no help finds the flags this command line gives, so that --help (parsed
    # in the second pass) can name them as the source of their values.
    given = vars(_parser(cls, description, preset, preset_name, {}, extra_flags, add_help=False)
                 .parse_known_args(argv)[0])
    given = {f.name: given[f.name] for f in dataclasses.fields(cls) if given.get(f.name) is not None}
    args = _parser(cls, description, preset, preset_name, given, extra_flags).parse_args(argv)
    values = {}
    for f in dataclasses.fields(cls):
        value, _ = _value(f, getattr(args, f.name), preset)
        values[f.name] = value
    return cls(**values), args


def _value(f: dataclasses.Field, flag_value, preset: dict):
    """(the value a run uses, where it came from) for one field."""
    if flag_value is not None:
        value, source = flag_value, flag_name(f.name)
    elif f.name in preset:
        value, source = preset[f.name], None
    elif f.metadata.get("env") and os.environ.get(f.metadata["env"]):
        value, source = os.environ[f.metadata["env"]], "$" + f.metadata["env"]
    else:
        value, source = f.default, "the default"
    if f.metadata.get("nullable") and isinstance(value, str) and value in NONE_WORDS:
        value = None  # "--model none": back to the default
    return value, source


def _parser(cls, description, preset, preset_name, given, extra_flags, add_help=True):
    p = argparse.ArgumentParser(description=description, add_help=add_help,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra_flags:
        extra_flags(p)
    for f in dataclasses.fields(cls):
        value, source = _value(f, given.get(f.name), preset)
        source = source or f"preset {preset_name}"
        if f.metadata.get("secret"):
            shown = "set, not shown" if value else "none"
        else:
            shown = "none" if value is None else str(value).lower() if isinstance(value, bool) else value
        env = f"; ${f.metadata['env']} when no flag gives it" if f.metadata.get("env") else ""
        help_text = f"{f.metadata['help']}{env} (this run: {shown}, from {source})".replace("%", "%%")
        kind = _base_type(f)
        if kind is bool:
            p.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
        else:
            p.add_argument(flag_name(f.name), type=kind if kind in (int, float) else str, default=None,
                           choices=f.metadata.get("choices"), help=help_text)
    return p


def _base_type(f: dataclasses.Field):
    """int for `int` and `int | None`; str for anything else that is not bool or float."""
    kind = f.type
    if isinstance(kind, types.UnionType):
        kind = next(t for t in kind.__args__ if t is not type(None))
    return kind
