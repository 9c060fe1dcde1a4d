"""Old spellings of flags and settings, kept working for one release.

A renamed flag or setting must not break a script, a unit file or a config file the day it
is renamed: the old spelling still works and says, in one line on stderr, which spelling
replaces it. Every command declares its old spellings through :func:`add_alias` (flags) or
:func:`upgrade_keys` (settings keys from a TOML file, the environment or a mapping), so the
message reads the same everywhere. Cheap to import: argparse and sys only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

#: When the old spellings go (said in every deprecation line).
REMOVED_IN = "the next release"


def warn(where: str, old: str, new: str) -> None:
    """The one deprecation line: ``<where>: <old> is deprecated ...; use <new>``."""
    print(f"{where}: {old} is deprecated and goes in {REMOVED_IN}; use {new}", file=sys.stderr)


class _Alias(argparse.Action):
    """An old option string that warns, then acts exactly as the new option would."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        target: argparse.Action,
        new: str,
        convert: Callable[[Any], Any] | None = None,
        shown: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(
            option_strings,
            dest=target.dest,
            nargs=target.nargs,
            const=target.const,
            type=cast(Any, target.type),  # a registered type's name passes through as is
            choices=target.choices,
            metavar=target.metavar,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
        self.target = target
        self.new = new
        self.convert = convert
        self.shown = shown or new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warn(parser.prog, option_string or self.option_strings[0], self.shown)
        if self.convert is not None:
            values = self.convert(values)
        self.target(parser, namespace, values, self.new)


def add_alias(
    parser: argparse.ArgumentParser | Any,
    old: str,
    new: str,
    convert: Callable[[Any], Any] | None = None,
    shown: str | None = None,
) -> None:
    """Accept ``old`` wherever ``new`` (already added to ``parser``) is accepted.

    ``old`` is left out of ``--help``; using it prints the deprecation line and stores the
    value under the new option's name, after ``convert`` when the unit changed (ms -> s);
    ``shown`` replaces ``new`` in the message then (``--slo-latency-s (seconds)``).
    ``--no-`` forms of a boolean flag are aliased one by one (``--no-old`` -> ``--no-new``).
    ``parser`` may be an argument group of the parser that holds ``new``.
    """
    target = parser._option_string_actions[new]  # noqa: SLF001 (argparse has no public lookup)
    parser.add_argument(old, action=_Alias, target=target, new=new, convert=convert, shown=shown)


def upgrade_keys(
    values: Mapping[str, Any], renamed: Mapping[str, str], where: str
) -> dict[str, Any]:
    """``values`` with each old key under its new name (warning once per old key used).

    When both spellings are given the new one wins, so a file being migrated can hold both.
    """
    out = dict(values)
    for old, new in renamed.items():
        if old in out:
            warn(where, old, new)
            value = out.pop(old)
            out.setdefault(new, value)
    return out
