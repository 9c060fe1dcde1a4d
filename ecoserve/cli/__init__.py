"""The ``ecoserve`` command: one sub-command per face of the engine.

Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and
``run(args) -> int``; modules are imported only when their command runs, so
``ecoserve devices`` does not pay for torch or FastAPI.

The top face: may import every other part of ecoserve; nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS = {
    "serve": "run the inference daemon (HTTP, FastAPI on uvicorn)",
    "replay": "replay arrival traces against the engine and compare tuners",
    "fleet": "serve a fleet of boards through Ray Serve, parking the idle ones",
    "devices": "show what this box lets ecoserve control and measure",
    "profile": "sweep configurations on the real device and write a twin profile table",
    "top": "watch a running daemon's tuner live in the terminal",
    "restore": "put the clocks back from the record an ecoserve that died left behind",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecoserve",
        description="Energy- and latency-aware inference serving for edge devices.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"ecoserve.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name != f"ecoserve.cli.{name}_cmd":
                raise
            continue  # this installation ships without that command
        module.add_parser(sub, name, help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
