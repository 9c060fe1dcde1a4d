"""``ecoserve top``: a live terminal view of a running daemon (see ``ecoserve.top``)."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the daemon's address (default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    parser.add_argument(
        "--windows", type=int, default=40, help="windows drawn in the sparklines (default 40)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ecoserve.top import run as top

    # httpx logs every request at INFO: once a second, drawn through the live view
    logging.getLogger("httpx").setLevel(logging.WARNING)

    if not args.interval > 0:
        print("ecoserve top: --interval must be > 0 seconds")
        return 2
    if not args.url.startswith(("http://", "https://")):
        print(f"ecoserve top: --url must start with http:// or https://, got {args.url!r}")
        return 2
    return top(args.url, interval=args.interval, windows=max(1, args.windows))
