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
    assert (params["format"], params["compress"], params["check_space"], params["part_mb"], params["batch_size"]) == \
        ("hdf5", False, False, 64, 3)
    params = parse(["cache-teacher", "--config", str(cfg), "--format", "zarr", "--compress", "--batch-size", "5"])
    assert (params["format"], params["compress"], params["batch_size"]) == ("zarr", True, 5)  # flags win
    cfg.write_text("fmt = \"hdf5\"\ncompress = false\npart_mb = 8\n")  # field names, and fmt (the former name)
    params = parse(["cache-teacher", "--config", str(cfg)])
    assert (params["format"], params["compress"], params["part_mb"]) == ("hdf5", False, 8)


def test_unknown_and_ill_typed_keys_are_refused(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("formats = \"hdf5\"\n")
    with pytest.raises(click.BadParameter, match="unknown option\\(s\\) formats"):
        parse(["cache-teacher", "--config", str(cfg)])
    cfg.write_text("format = \"tar\"\n")
    with pytest.raises(click.BadParameter):
        parse(["cache-teacher", "--config", str(cfg)])


@pytest.mark.parametrize("line, message", [
    ("steps = 2.7", "steps = 2.7 must be an integer"),           # click alone would train 2 steps
    ("steps = true", "steps = True must be an integer"),
    ("lr = [1e-3]", "lr = [0.001] must be a number"),             # was an internal error
    ("kd = 3", "kd = 3 must be a string"),
    ("online-teacher = \"yes\"", "online-teacher = 'yes' must be true or false"),
])
def test_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, line, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(line + "\n")
    with pytest.raises(click.BadParameter, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(["distill", "--config", str(cfg)])
    cfg.write_text("lr = 1\nsteps = 3\n")  # an integer is a number
    assert parse(["distill", "--config", str(cfg)])["lr"] == 1


def test_debug_is_accepted_after_the_subcommand(tmp_path):
    from click.testing import CliRunner

    from stdvsr.errors import StdvsrError

    missing = str(tmp_path / "missing.zarr")
    quiet = CliRunner().invoke(cli, ["distill", "--cache", missing, "--out", str(tmp_path / "o")])
    assert quiet.exit_code == 1 and "Error:" in quiet.stderr
    loud = CliRunner().invoke(cli, ["distill", "--cache", missing, "--out", str(tmp_path / "o"), "--debug"])
    assert isinstance(loud.exception, StdvsrError)


def test_stdvsr_home_that_is_a_file_is_named(tmp_path, monkeypatch):
    from click.testing import CliRunner

    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("STDVSR_HOME", str(home))
    result = CliRunner().invoke(cli, ["data", "prepare", "demo"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == (f"Error: STDVSR_HOME {home} is a file, not a folder; point STDVSR_HOME at a "
                                     "folder (default ~/.cache/stdvsr)")


def test_a_learning_rate_that_cannot_train_is_refused_by_both_training_stages(tmp_path):
    from click.testing import CliRunner

    for command in ("train-teacher", "distill"):
        for lr in ("nan", "-1e-4", "0"):
            result = CliRunner().invoke(cli, [command, "--lr", lr, "--out", str(tmp_path / command)])
            assert result.exit_code == 1 and "Traceback" not in result.output
            assert result.stderr.strip().startswith(f"Error: --lr {float(lr)} must be a finite number > 0")
