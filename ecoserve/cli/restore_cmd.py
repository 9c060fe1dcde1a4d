"""``ecoserve restore``: put the clocks back from the record a dead ecoserve left behind.

Every ecoserve that changes clocks records them first (``devices.restore_record``) and
removes the record once it has put them back. A record still there means the process died
without restoring (SIGKILL, the OOM killer, a power cut mid-write): this command restores
from it through the same ``recover`` as the next start, and the systemd unit runs it as
``ExecStopPost=``. Nothing to restore is not an error.

The record is looked for where ``serve`` writes it: ``--sysfs-root`` and ``--restore-dir``
come from the flags, else the ``ECOSERVE_*`` environment, else the ``--config`` TOML file
(or ``ECOSERVE_CONFIG``), as for ``serve``, so a unit that gives both commands the same
environment file and config finds it.

Exit status: 0 when every clock is back (or nothing was recorded); 1 when some clock stays
changed (it stays in the record, with the fix said) or the record cannot be read; 2 for a
bad setting.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ecoserve.server.deprecated import add_alias

if TYPE_CHECKING:
    from devices.restore_record import RestoreRecord


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="the TOML file `ecoserve serve --config` reads (its sysfs_root and restore_dir)",
    )
    parser.add_argument(
        "--sysfs-root",
        default=None,
        metavar="DIR",
        help="where sysfs is mounted from (default: as serve, else /; a fake tree in tests)",
    )
    parser.add_argument(
        "--restore-dir",
        default=None,
        metavar="DIR",
        help="folder of the record (default: as serve, else $STATE_DIRECTORY, else "
        "/var/lib/ecoserve when writable, else $XDG_STATE_HOME/ecoserve)",
    )
    add_alias(parser, "--state-dir", "--restore-dir")
    parser.add_argument(
        "--force",
        action="store_true",
        help="restore even if the process that wrote the record is still running",
    )
    parser.add_argument(
        "--from-board",
        default=None,
        metavar="TABLE",
        help="put back the board's defaults instead of the record: a board profile "
        "(xavier-nx, agx-xavier, orin, nano) or a JSON file of clocks; for a record that "
        "cannot be read, which this removes once every clock is back",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from devices.restore_record import RecordOwnedError, RestoreRecord, recover
    from devices.sysfs import SysfsRoot
    from ecoserve.server.settings import load_settings

    given = {"config": args.config, "sysfs_root": args.sysfs_root}
    given["restore_dir"] = args.restore_dir
    try:
        settings = load_settings({k: v for k, v in given.items() if v is not None})
    except (ValueError, TypeError) as exc:
        print(f"ecoserve restore: {exc}", file=sys.stderr)
        return 2
    root = SysfsRoot(settings.sysfs_root)
    record = RestoreRecord(root, settings.restore_dir)
    if args.from_board is not None:
        return _from_board(record, args.from_board, args.force)
    try:
        recovery = recover(root, settings.restore_dir, force=args.force)
    except RecordOwnedError as exc:
        print(f"ecoserve restore: {exc}; it restores the clocks itself when it stops; "
              "--force restores now")  # fmt: skip
        return 1
    if not recovery.found:
        print(f"nothing to restore: no record at {record.path}")
        return 0
    if recovery.restored:
        print(f"restored from {record.path}:")
        for clock in recovery.restored:
            print(f"  {clock.describe()}")
    problems = recovery.problems()
    for message in problems:
        print(f"ecoserve restore: {message}")
    return 1 if problems else 0


def _from_board(record: RestoreRecord, table: str, force: bool) -> int:
    """Put ``table``'s clocks back (every one tried) and drop the record once all are back."""
    from devices.base import DeviceError
    from devices.board_defaults import board_clocks
    from devices.restore_record import put_clock

    owner = record.owner_alive()
    if owner is not None and not force:
        print(f"ecoserve restore: ecoserve pid {owner} drives these clocks; stop it or --force")
        return 1
    try:
        clocks = board_clocks(record.root, table)
    except (ValueError, DeviceError) as exc:
        print(f"ecoserve restore: {exc}", file=sys.stderr)
        return 2
    failed = []
    for clock in clocks:
        try:
            put_clock(record.root, clock)
        except DeviceError as exc:
            failed.append(f"{clock.describe()}: {exc}")
        else:
            print(f"  {clock.describe()}")
    if failed:
        print("ecoserve restore: not put back (the record is kept): " + "; ".join(failed))
        return 1
    record.remove()
    print(f"the board's defaults ({table}) are back; record {record.path} removed")
    return 0
