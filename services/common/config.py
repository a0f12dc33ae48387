"""Service options, declared once: command-line flags, VOLTE_* environment variables, defaults.

A service declares its options as a frozen dataclass:

    @dataclass(frozen=True, kw_only=True)  # kw_only: required options may follow defaults
    class SbcConfig:
        sip_port: int = option(5060, "UDP and TCP port for SIP")
        instance_id: str = option(MISSING, "name of this instance")  # no default: required

    config = load(SbcConfig, prog="volte-sbc")

The field `sip_port` becomes the flag `--sip-port` and the environment variable
`VOLTE_SIP_PORT`. A flag wins over the environment (a person at a shell overrides what the
Deployment set), the environment over the default. A value that does not convert ends the
program like any argparse error: usage, a message naming the flag or variable, exit status 2.

Field types str, int, float, bool, pathlib.Path and `X | None` of those convert by themselves;
any other type needs `parse=`. A bool is `--flag`/`--no-flag` and reads 1/0, true/false, yes/no,
on/off from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX = "VOLTE_"
MISSING: Any = dataclasses.MISSING

C = TypeVar("C", bound="DataclassInstance")
T = TypeVar("T")

_HELP = "volte.help"
_PARSE = "volte.parse"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}")


def parse_ip(text: str) -> str:
    """An IPv4 or IPv6 address (brackets allowed), in its one normal spelling."""
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def parse_ip_or_empty(text: str) -> str:
    return parse_ip(text) if text.strip() else ""


def parse_positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    """A parser for an option taking one of `choices` (any case, spaces around ignored)."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}: {text!r}")
        return value

    return parse


_PARSERS: dict[object, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: parse_bool,
    Path: Path,
}


def option(default: T, help: str, *, parse: Callable[[str], T] | None = None) -> T:
    """A dataclass field that is a service option; pass MISSING as default to require it."""
    return dataclasses.field(default=default, metadata={_HELP: help, _PARSE: parse})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


@dataclasses.dataclass(frozen=True)
class _Option:
    name: str
    parse: Callable[[str], Any]
    is_bool: bool
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def env(self) -> str:
        return env_name(self.name)


def _converter(annotation: object, field_name: str) -> Callable[[str], Any]:
    # `int | None` converts like `int`; None only ever comes from the default.
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            annotation = members[0]
    if annotation in _PARSERS:
        return _PARSERS[annotation]
    raise TypeError(f"option {field_name!r}: no converter for {annotation!r}; pass parse=")


def _options(spec: type[DataclassInstance]) -> list[_Option]:
    hints = typing.get_type_hints(spec)
    result = []
    for f in dataclasses.fields(spec):
        parse = f.metadata.get(_PARSE) or _converter(hints[f.name], f.name)
        result.append(
            _Option(f.name, parse, parse is parse_bool, f.default, f.metadata.get(_HELP, ""))
        )
    return result


def add_options(parser: argparse.ArgumentParser, spec: type[DataclassInstance]) -> None:
    """Add one flag per field of `spec` to `parser` (use `resolve` after parsing)."""
    for opt in _options(spec):
        shown = "required" if opt.default is MISSING else f"default: {opt.default}"
        # argparse %-formats help text, so a literal % must be doubled.
        text = f"{opt.help} (env {opt.env}; {shown})".strip().replace("%", "%%")
        # SUPPRESS leaves the attribute unset when the flag is absent: then the env applies.
        common: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
        if opt.is_bool:
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(opt.flag, type=opt.parse, metavar=opt.name.upper(), **common)


def resolve(
    parser: argparse.ArgumentParser,
    spec: type[C],
    namespace: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Build `spec` from parsed flags, then `environ` (default os.environ), then defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for opt in _options(spec):
        if hasattr(namespace, opt.name):
            values[opt.name] = getattr(namespace, opt.name)
        elif opt.env in env:
            values[opt.name] = _from_env(parser, opt, env[opt.env])
        elif opt.default is MISSING:
            parser.error(f"{opt.flag} or environment variable {opt.env} is required")
    return spec(**values)


def _from_env(parser: argparse.ArgumentParser, opt: _Option, raw: str) -> Any:
    try:
        return opt.parse(raw)
    except argparse.ArgumentTypeError as exc:
        detail = str(exc)
    except (TypeError, ValueError):
        detail = f"invalid {getattr(opt.parse, '__name__', 'value')} value"
    # parser.error exits with status 2, as argparse does for a bad flag.
    parser.error(f"environment variable {opt.env}={raw!r}: {detail} (for {opt.flag})")


def load(
    spec: type[C],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Parse `argv` (default sys.argv[1:]) and the environment into an instance of `spec`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_options(parser, spec)
    return resolve(parser, spec, parser.parse_args(argv), environ)
