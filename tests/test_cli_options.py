"""Every command keeps the options it had: flags, defaults, types, choices and help text, compared with
``tests/data/cli_options.json`` (written from the CLI before options were generated from the stage dataclasses).

An option added or changed on purpose: regenerate the file with ``python -m tests.test_cli_options --write`` and
review its diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from stdvsr.cli import cli

REFERENCE = Path(__file__).parent / "data" / "cli_options.json"


def _type(t: click.ParamType) -> dict:
    kind = {"name": type(t).__name__}
    if isinstance(t, click.Choice):
        kind["choices"] = list(t.choices)
    if isinstance(t, (click.IntRange, click.FloatRange)):
        kind.update(min=t.min, max=t.max, min_open=t.min_open, max_open=t.max_open)
    if isinstance(t, click.Path):
        kind.update(file_okay=t.file_okay, dir_okay=t.dir_okay)
    return kind


def _default(value):
    """JSON for a default; click's "no value" sentinel (click ≥ 8.3) reads as None, like older clicks' None."""
    if isinstance(value, (tuple, list)):
        return [_default(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None if "UNSET" in repr(value) else repr(value)


def describe(command: click.Command, path: str = "stdvsr") -> dict:
    """``{command path: {"help": docstring, "params": {first flag: attributes}}}`` for ``command`` and its
    subcommands. Keyed by flag, not by the Python parameter name, which is free to change."""
    params = {}
    for p in command.params:
        key = p.opts[0] if isinstance(p, click.Option) else p.name
        params[key] = {"opts": list(p.opts), "secondary_opts": list(p.secondary_opts), "default": _default(p.default),
                       "type": _type(p.type), "required": p.required, "multiple": p.multiple, "nargs": p.nargs,
                       "help": getattr(p, "help", None), "is_flag": getattr(p, "is_flag", False),
                       "flag_value": _default(getattr(p, "flag_value", None)), "show_default": getattr(p, "show_default", None),
                       "metavar": p.metavar, "eager": p.is_eager, "expose_value": p.expose_value,
                       "argument": isinstance(p, click.Argument)}
    found = {path: {"help": command.help, "params": params}}
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found.update(describe(sub, f"{path} {name}"))
    return found


def test_every_option_keeps_its_flags_defaults_types_and_help():
    expected = json.loads(REFERENCE.read_text())
    actual = json.loads(json.dumps(describe(cli)))  # as JSON sees it (tuples become lists)
    assert sorted(actual) == sorted(expected), "commands differ"
    for name in expected:
        assert actual[name]["help"] == expected[name]["help"], f"{name}: docstring differs"
        a, e = actual[name]["params"], expected[name]["params"]
        assert sorted(a) == sorted(e), f"{name}: options differ"
        for flag in e:
            assert a[flag] == e[flag], f"{name} {flag} differs"


def test_every_help_page_renders():
    """The pages themselves (order and wrapping may follow the code; what they list is checked above)."""
    for name, page in json.loads(REFERENCE.read_text()).items():
        result = CliRunner().invoke(cli, [*name.split()[1:], "--help"])
        assert result.exit_code == 0, (name, result.output)
        for flag, attrs in page["params"].items():
            if not attrs["argument"]:
                assert flag in result.output, (name, flag)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_cli_options --write")
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(describe(cli), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {REFERENCE}")
