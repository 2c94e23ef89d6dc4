"""``--config FILE.toml``: keys may be option names or parameter names, negative flags invert, flags still win."""

import click
import pytest

from stdvsr.cli import cli


def parse(argv: list[str]) -> dict:
    """The parameters click would pass to a subcommand, without running it."""
    command = cli.get_command(click.Context(cli), argv[0])
    return command.make_context(argv[0], list(argv[1:])).params


def test_option_names_parameter_names_and_negative_flags(tmp_path):
    cfg = tmp_path / "cache.toml"
    cfg.write_text('format = "hdf5"\nno-compress = true\nno_space_check = true\nhdf5-part-mb = 64\n'
                   'batch-size = 3\n')
    params = parse(["cache-teacher", "--config", str(cfg)])
    assert (params["fmt"], params["compress"], params["check_space"], params["part_mb"], params["batch_size"]) == \
        ("hdf5", False, False, 64, 3)
    params = parse(["cache-teacher", "--config", str(cfg), "--format", "zarr", "--compress", "--batch-size", "5"])
    assert (params["fmt"], params["compress"], params["batch_size"]) == ("zarr", True, 5)  # flags win
    cfg.write_text("fmt = \"hdf5\"\ncompress = false\n")  # the parameter names work too
    params = parse(["cache-teacher", "--config", str(cfg)])
    assert (params["fmt"], params["compress"]) == ("hdf5", False)


def test_unknown_and_ill_typed_keys_are_refused(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("formats = \"hdf5\"\n")
    with pytest.raises(click.BadParameter, match="unknown option\\(s\\) formats"):
        parse(["cache-teacher", "--config", str(cfg)])
    cfg.write_text("format = \"tar\"\n")
    with pytest.raises(click.BadParameter):
        parse(["cache-teacher", "--config", str(cfg)])
