"""``ecoserve profile``: sweep clock settings x batch sizes on a device, write a profile table.

The table (``twins.profile_table`` format) gives a board nobody has modelled a twin of
its own (``TableTwin``). The sweep pins the clocks, so it runs inside ``guarded``: the
clocks go back to what they were on every exit path, and a watchdog hands them back if
the model hangs. Interrupted runs resume: rerun the same command.

Exit status: 0 done; 1 the device failed mid-sweep (rows so far are kept); 2 the request
is wrong (grid, configuration file, off-table frequency, model, output file); 130 SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ecoserve.server.deprecated import add_alias

log = logging.getLogger(__name__)


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--model", default="builtin:cnn", help="model spec (default builtin:cnn)")
    parser.add_argument(
        "--device",
        required=True,
        metavar="SPEC",
        help="sysfs (the real clocks), virtual:BOARD, or none (batch size only)",
    )
    parser.add_argument("--sysfs-root", default="/", metavar="DIR", help="sysfs root (default /)")
    parser.add_argument("--meter", default="auto", help="meter spec (default auto)")
    parser.add_argument(
        "--restore-dir",
        default=None,
        metavar="DIR",
        help="folder of the clocks' restore record (default: see ecoserve restore --help)",
    )
    add_alias(parser, "--state-dir", "--restore-dir")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--grid",
        metavar="SPEC",
        help="e.g. cpu=4,gpu=4,batch=1,2,4,8,16: N points strided over each clock table "
        "('all' for every one), these batch sizes "
        "(default cpu=4,gpu=4,batch=1,2,4,8,16)",
    )
    what.add_argument(
        "--configs",
        metavar="FILE",
        help="CSV (columns cpu_freq_hz, gpu_freq_hz in Hz, batch_size) or JSON list of the "
        "same: exactly these settings; a profile table works too",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed batches per setting (10)")
    parser.add_argument(
        "--warmup-batches",
        type=int,
        default=2,
        help="untimed batches after each setting is pinned, before timing it (2)",
    )
    parser.add_argument(
        "--startup-seconds",
        type=float,
        default=2.0,
        help="run the model this long once before the sweep, to get past its start-up costs (2.0)",
    )
    add_alias(parser, "--warmup", "--warmup-batches")
    add_alias(parser, "--warmup-seconds", "--startup-seconds")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="time each setting for at least this long so a sampled meter resolves it (1.0)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=1.0,
        help="read the meter this long with nothing running, for idle_power_w (1.0)",
    )
    parser.add_argument(
        "--watchdog-s",
        type=float,
        default=60.0,
        help="hand the clocks back if no batch finishes for this long; 0 disables (60)",
    )
    parser.add_argument("--board", help="board name for the table (default: detected)")
    parser.add_argument("--out", required=True, metavar="CSV", help="profile table to write")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from devices.base import DeviceError
    from devices.safety import guarded
    from ecoserve import profiling as profiler
    from ecoserve.models.loader import load_model
    from ecoserve.runtime.device_spec import open_device
    from twins.profile_table import ProfileTableError

    if (
        args.repeats < 1
        or args.warmup_batches < 0
        or args.min_seconds < 0
        or args.idle_seconds < 0
        or args.startup_seconds < 0
    ):
        return _usage("--repeats must be >= 1; --warmup-batches and the --*-seconds options >= 0")
    try:
        if args.configs:
            requested = profiler.read_configs(args.configs)
            grid = None
        else:
            grid = profiler.parse_grid(args.grid or profiler.DEFAULT_GRID)
        model = load_model(args.model)
    except ValueError as exc:  # ProfileError included
        return _usage(str(exc))
    try:
        device = open_device(args.device, args.sysfs_root, args.meter, args.restore_dir)
    except ValueError as exc:
        return _usage(str(exc))
    except DeviceError as exc:
        return _fail(f"cannot open device {args.device!r}: {exc}")
    try:
        knobs = {k.name: k for k in device.actuator.knobs()}
        if grid is not None:
            settings = profiler.grid_settings(knobs, grid)
        else:
            settings = profiler.check_settings(requested, knobs)
        items = [model.example_item(seed=i) for i in range(max(s.batch for s in settings))]
        metadata = profiler.base_metadata(
            board=args.board or _board(args.device, args.sysfs_root),
            model=args.model,
            device=device,
            warmup=args.warmup_batches,
            repeats=args.repeats,
        )
        writer = profiler.TableWriter(args.out, metadata)
    except (ValueError, ProfileTableError) as exc:
        device.close()
        return _usage(str(exc))

    for warning in device.actuator.warnings():
        log.warning("%s", warning)
    if device.meter.estimated:
        log.warning("meter %s is an ESTIMATE, not a measurement", device.meter.source)
    try:
        with guarded(device, args.watchdog_s or None) as guard:
            if "idle_power_w" not in writer.metadata:
                idle = profiler.measure_idle_power(device, args.idle_seconds)
                writer.metadata["idle_power_w"] = repr(round(idle, 4))
            with _progress() as progress:
                task = progress.add_task("profiling", total=len(settings))

                def on_row(setting: profiler.Setting, row: Any) -> None:
                    note = "" if row is not None else " (already in table)"
                    progress.update(task, advance=1, description=setting.describe() + note)

                measured = profiler.sweep(
                    device,
                    model.batch_fn,
                    items,
                    settings,
                    writer,
                    warmup=args.warmup_batches,
                    repeats=args.repeats,
                    min_seconds=args.min_seconds,
                    startup_s=args.startup_seconds,
                    guard=guard,
                    on_row=on_row,
                )
    except DeviceError as exc:
        return _fail(f"{exc}\n{_kept(writer)}")
    except KeyboardInterrupt:
        print(f"interrupted; clocks restored. {_kept(writer)}", file=sys.stderr)
        return 130
    finally:
        device.close()
    skipped = len(settings) - len(measured)
    print(
        f"{args.out}: {len(writer.rows)} rows ({len(measured)} measured now"
        + (f", {skipped} already there" if skipped else "")
        + f"); idle {writer.metadata['idle_power_w']} W; clocks restored"
    )
    return 0


def _board(spec: str, sysfs_root: str) -> str:
    kind, _, rest = spec.partition(":")
    if kind == "virtual":
        return rest or "xavier-nx"
    from devices.discovery import discover

    return discover(sysfs_root).board


def _kept(writer: Any) -> str:
    if not writer.rows:
        return "No row was written."
    return f"{len(writer.rows)} rows kept in {writer.path}; rerun the same command to resume."


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _usage(message: str) -> int:
    print(f"ecoserve profile: error: {message}", file=sys.stderr)
    return 2


def _fail(message: str) -> int:
    print(f"ecoserve profile: {message}", file=sys.stderr)
    return 1
