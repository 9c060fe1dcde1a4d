"""``ecoserve fleet``: serve a fleet of boards through Ray Serve (see ``ecoserve.rayfleet``).

Without ``--address`` it starts Ray on this machine and offers every board's custom resource
here, so virtual boards run on a laptop. With ``--address`` it joins a running cluster, whose
nodes (the boards) were started with their resource: ``ray start --address HEAD:6379
--resources '{"board_<name>": 1}'``. Ctrl-C (or SIGTERM) shuts the application down: every
board drains, saves its state and restores its device.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ecoserve.core.fleet import DEFAULTS, POLICIES, RENAMED_POLICIES
from ecoserve.server.deprecated import add_alias


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=__doc__)
    p.add_argument("--boards", help="KIND:COUNT,... of virtual boards (e.g. xavier-nx:2,nano:1)")
    p.add_argument(
        "--config",
        type=Path,
        help="TOML file: fleet keys at the top, [[boards]] tables (name, kind, device, "
        "wake_s, park_command, unpark_command), a [serve] table of ecoserve serve settings for "
        "every board",
    )
    p.add_argument(
        "--policy",
        choices=[*(n for n in POLICIES if n != "oracle"), *RENAMED_POLICIES],
        help="fleet policy (default consolidation; ray-rule is the old name of ray-autoscale)",
    )
    p.add_argument("--period-s", type=float, help="fleet policy period in seconds (default 1)")
    p.add_argument(
        "--park-after-s",
        type=float,
        help=f"seconds a lower need must hold (default {DEFAULTS.park_after_s:g})",
    )
    p.add_argument("--model", help="model spec every board serves (default builtin:cnn)")
    p.add_argument(
        "--state-dir",
        help="the fleet's folder of per-board files: tuner state, shutdown record and (unless "
        "the [serve] table gives restore_dir) the clocks' restore record",
    )
    p.add_argument("--address", help="Ray cluster to join (default: start Ray here)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    add_alias(p, "--period", "--period-s")
    add_alias(p, "--park-after", "--park-after-s")
    p.set_defaults(run=run)
    return p


def fleet_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fleet's keys from the config file, then the command line over them."""
    data: dict[str, Any] = {}
    if args.config is not None:
        import tomllib

        try:
            data = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"--config {args.config}: {exc}") from None
    for key, value in (
        ("boards", args.boards),
        ("policy", args.policy),
        ("period_s", args.period_s),
        ("park_after_s", args.park_after_s),
        ("model", args.model),
        ("state_dir", args.state_dir),
    ):
        if value is not None:
            data[key] = value
    return data


def run(args: argparse.Namespace) -> int:
    from ecoserve.rayfleet.config import FleetSettings

    try:
        fleet = FleetSettings.from_args(fleet_args(args))
    except (ValueError, TypeError) as exc:
        print(f"ecoserve fleet: {exc}", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve

        from ecoserve.rayfleet.app import build_fleet
    except ImportError as exc:
        print(
            f"ecoserve fleet: Ray Serve is not installed ({exc}); pip install 'ecoserve[fleet]'",
            file=sys.stderr,
        )
        return 2
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(resources={b.resource: 1 for b in fleet.boards}, include_dashboard=False)
    missing = [b.resource for b in fleet.boards if ray.cluster_resources().get(b.resource, 0) < 1]
    if missing:
        print(
            f"ecoserve fleet: no node offers {', '.join(missing)}; start each board with "
            "ray start --address HEAD:6379 --resources '{\"board_<name>\": 1}'",
            file=sys.stderr,
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_fleet(fleet), name="ecoserve-fleet", route_prefix="/", blocking=False)
        print(
            f"fleet of {len(fleet.boards)} boards ({fleet.policy}) on "
            f"http://{args.host}:{args.port}; Ctrl-C stops it and restores every board",
            flush=True,
        )
        stop.wait()
    finally:
        serve.shutdown()  # each board drains and restores its device
        ray.shutdown()
    return 0
