"""Options declared once. A stage's settings are a dataclass whose fields say, in their metadata, everything the
command line needs: the help text, the click type (choices, ranges) and, rarely, a flag that is not the field's
name. From that one declaration come the command's click options (:func:`click_options`), the keys ``--config
FILE.toml`` accepts (:func:`config_file_option`), the API's type and range checks (:func:`check_fields`) and the
set of settings a resumed run may change (:func:`resumable`).

An ``option(..., cli=False)`` field (``keep_checkpoints``) is checked and resumable like the others but set from
Python only; a field without :func:`option` metadata (``model_args``) is left out of all of this."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import click

from stdvsr.errors import StdvsrError

_META = "stdvsr_option"

def option(default: Any = None, help: str | None = None, *, type: click.ParamType | None = None,
           flag: str | None = None, negatable: bool = False, none: str | None = None, resumable: bool = False,
           cli: bool = True, aliases: tuple[str, ...] = (), multiple: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line option ``--field-name``, with ``help`` as its help text.

    ``type``: the click type (a :class:`click.Choice`, :class:`click.IntRange`, …); by default the default's type.
    ``flag``: the option's spelling where it is not the field's name (``--no-space-check`` for ``check_space``: a
    flag spelled as a negation sets the field to False). ``negatable``: a boolean with a ``--no-`` twin. ``none``:
    the word that means None on the command line (``--val-data none``). ``resumable``: ``--resume`` may change it.
    ``cli=False``: checked and resumable like the others, but set from Python only. ``aliases``: former names a
    ``--config`` file may still use. ``multiple``: a repeatable option (a tuple field). ``default=REQUIRED``: a
    required option (and a field without a default).
    """
    meta = {_META: dict(help=help, type=type, flag=flag, negatable=negatable, none=none, resumable=resumable,
                        cli=cli, aliases=aliases, multiple=multiple, metavar=metavar)}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


#: ``option(REQUIRED, ...)``: a field without a default, a required option.
REQUIRED = object()


def redeclare(base, name: str, default: Any, **changes) -> Any:
    """Field ``name`` of dataclass ``base`` with another default (and ``changes`` to its :func:`option`
    arguments), for a stage that shares a setting but not its default."""
    meta = {**next(f for f in dataclasses.fields(base) if f.name == name).metadata[_META], **changes}
    return option(default, **meta)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING


def _declared(cls, cli: bool = False) -> list[tuple[dataclasses.Field, dict]]:
    """The option fields of ``cls`` (``cli``: only those on the command line), the class's own declarations first
    and then the inherited ones, so a stage's help starts with what is particular to it."""
    fields = [f for f in dataclasses.fields(cls) if _META in f.metadata and (f.metadata[_META]["cli"] or not cli)]
    own = list(vars(cls).get("__annotations__", {}))
    fields.sort(key=lambda f: own.index(f.name) if f.name in own else len(own))
    return [(f, f.metadata[_META]) for f in fields]


def flag_of(f: dataclasses.Field) -> str:
    """The option that sets field ``f`` (``--batch-size``)."""
    meta = f.metadata.get(_META, {})
    return meta.get("flag") or "--" + f.name.replace("_", "-")


def resumable(cls) -> set[str]:
    """The fields a resumed run may change (every other one must match the checkpoint's)."""
    return {f.name for f, meta in _declared(cls) if meta["resumable"]}


def _click_type(f: dataclasses.Field, meta: dict) -> click.ParamType | None:
    if meta["type"] is not None:
        return meta["type"]
    if meta["multiple"] or not _has_default(f):
        return click.STRING
    return {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}.get(type(f.default))


def click_options(cls, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per declared field of ``cls``, in field order."""
    def decorate(command: Callable) -> Callable:
        for f, meta in reversed(_declared(cls, cli=True)):
            if f.name in skip:
                continue
            flag, kw = flag_of(f), dict(help=meta["help"])
            if isinstance(f.default, bool):
                inverted = f.default is True and not meta["negatable"]  # `--no-space-check` for check_space
                if inverted and not flag.startswith("--no-"):
                    raise TypeError(f"{cls.__name__}.{f.name}: a flag that defaults to true needs negatable=True "
                                    "or a --no-… flag")
                decl = f"{flag}/--no-{flag[2:]}" if meta["negatable"] else flag
                kw.update(is_flag=True)
                if inverted:
                    kw.update(flag_value=False, default=True)
                elif meta["negatable"]:
                    kw.update(default=f.default, show_default=True)
            else:
                decl = flag
                kw.update(type=_click_type(f, meta))
                if meta["multiple"]:
                    kw.update(multiple=True)
                if not _has_default(f):
                    kw.update(required=True)
                elif f.default is not None and not meta["multiple"]:
                    kw.update(default=f.default, show_default=True)
            if meta["metavar"] is not None:
                kw["metavar"] = meta["metavar"]
            command = click.option(decl, f.name, **kw)(command)
            command.__click_params__[-1].former_names = meta["aliases"]
        return command
    return decorate


def from_cli(cls, opts: dict, **extra) -> Any:
    """``cls`` from a command's keyword arguments: the declared fields are taken out of ``opts`` (a ``none`` word
    becomes None); what is left in ``opts`` is the command's own (``--resume``)."""
    values = {}
    for f, meta in _declared(cls):
        if f.name in opts:
            value = opts.pop(f.name)
            value = tuple(value) if meta["multiple"] else value
            values[f.name] = None if meta["none"] is not None and value == meta["none"] else value
    return cls(**values, **extra)


def check_fields(cfg) -> None:
    """Refuse a value of the wrong type, outside its choices or range, naming the flag (what click checks on the
    command line, for settings made in Python or a TOML file)."""
    for f, meta in _declared(type(cfg)):
        value = getattr(cfg, f.name)
        if value is None and (f.default is None or meta["none"] is not None):
            continue
        kind, flag = _click_type(f, meta), flag_of(f)
        if meta["multiple"]:
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise StdvsrError(f"{flag} takes a list of strings, not {value!r}")
            continue
        if isinstance(kind, click.Choice):
            if value not in kind.choices:
                raise StdvsrError(f"{flag} {value!r} is not one of {', '.join(map(str, kind.choices))}")
        elif isinstance(kind, (click.IntRange, click.types.IntParamType)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise StdvsrError(f"{flag} {value!r} must be an integer")
        elif isinstance(kind, (click.FloatRange, click.types.FloatParamType)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise StdvsrError(f"{flag} {value!r} must be a number")
            if math.isinf(value):  # within an open-ended range perhaps, but no setting means anything at infinity
                raise StdvsrError(f"{flag} {value} must be a finite number")
        elif kind is click.BOOL and not isinstance(value, bool):
            raise StdvsrError(f"{flag} {value!r} must be true or false")
        if isinstance(kind, (click.IntRange, click.FloatRange)):
            low = kind.min is not None and (value <= kind.min if kind.min_open else value < kind.min)
            high = kind.max is not None and (value >= kind.max if kind.max_open else value > kind.max)
            if low or high or math.isnan(value):  # NaN compares false with every bound
                bounds = [f"{'>' if kind.min_open else '≥'} {kind.min}"] if kind.min is not None else []
                bounds += [f"{'<' if kind.max_open else '≤'} {kind.max}"] if kind.max is not None else []
                raise StdvsrError(f"{flag} {value} must be {' and '.join(bounds)}")


# ----------------------------------------------------------------------------------------------- --config
def config_file_option(help: str) -> Callable:
    """``--config FILE`` (TOML): its keys become the defaults of the command's options (click's default_map);
    flags on the command line still win. A key is a field name (``batch_size``), an option's long name
    (``batch-size``, ``no-compress``, ``no-space-check``) or a field's former name; an unknown key or a value of the
    wrong kind is refused, naming the key."""
    return click.option("--config", type=click.Path(dir_okay=False), callback=_load_config_file, is_eager=True,
                        expose_value=False, help=help)


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return value
    import tomllib

    try:
        data = tomllib.loads(Path(value).read_text())
    except FileNotFoundError:
        raise click.BadParameter(f"{value} does not exist", ctx, param) from None
    except tomllib.TOMLDecodeError as e:
        raise click.BadParameter(f"{value} is not valid TOML: {e}", ctx, param) from None
    params = {p.name: p for p in ctx.command.params}
    negated: set[str] = set()  # keys whose true value sets the parameter to False
    for p in ctx.command.params:
        for opt in [o for o in getattr(p, "opts", []) if o.startswith("--")]:
            key = opt[2:].replace("-", "_")
            if key not in params:
                params[key] = p
                if getattr(p, "is_flag", False) and p.flag_value is False:
                    negated.add(key)
        for opt in [o for o in getattr(p, "secondary_opts", []) if o.startswith("--")]:
            params.setdefault(opt[2:].replace("-", "_"), p)
            negated.add(opt[2:].replace("-", "_"))
        for alias in getattr(p, "former_names", ()):
            params.setdefault(alias, p)
    unknown = sorted(k for k in data if k.replace("-", "_") not in params)
    if unknown:
        raise click.BadParameter(f"{value} sets unknown option(s) {', '.join(unknown)}", ctx, param)
    defaults = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        kind = _toml_kind(params[key])
        if kind is not None and not _is_kind(v, kind):
            raise click.BadParameter(f"{value}: {k} = {v!r} must be {kind}", ctx, param)
        defaults[params[key].name] = (not v) if key in negated and isinstance(v, bool) else v
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _toml_kind(param: click.Parameter) -> str | None:
    """What a TOML value for ``param`` must be (click would silently turn ``steps = 2.7`` into 2)."""
    if getattr(param, "is_flag", False):
        return "true or false"
    kind = {click.INT: "an integer", click.FLOAT: "a number", click.STRING: "a string"}.get(param.type)
    if kind is None:
        kind = ("an integer" if isinstance(param.type, click.IntRange) else
                "a number" if isinstance(param.type, click.FloatRange) else
                "a string" if isinstance(param.type, (click.Choice, click.Path)) else None)
    if kind is not None and getattr(param, "multiple", False):
        return f"a list of {kind.split(' ', 1)[1]}s"
    return kind


def _is_kind(value, kind: str) -> bool:
    if kind.startswith("a list of "):
        return isinstance(value, list) and all(_is_kind(v, "a " + kind[10:-1]) for v in value)
    return {"true or false": lambda v: isinstance(v, bool),
            "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "a string": lambda v: isinstance(v, str)}[kind](value)


def explicit(ctx: click.Context, cls) -> set[str]:
    """The fields of ``cls`` the user set (flag, environment or --config), as opposed to built-in defaults."""
    default = click.core.ParameterSource.DEFAULT
    return {f.name for f, _ in _declared(cls, cli=True) if ctx.get_parameter_source(f.name) not in (default, None)}
