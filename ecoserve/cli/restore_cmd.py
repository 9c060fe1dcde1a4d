"""``ecoserve restore``: put the clocks back from the record a dead ecoserve left behind.

Every ecoserve that changes clocks records them first (``devices.restore_record``) and
removes the record once it has put them back. A record still there means the process died
without restoring (SIGKILL, the OOM killer, a power cut mid-write): this command restores
from it, like the next start would, and the systemd unit runs it as ``ExecStopPost=``.
Nothing to restore is not an error.
"""

from __future__ import annotations

import argparse
from typing import Any

from ecoserve.server.deprecated import add_alias


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--sysfs-root",
        default="/",
        metavar="DIR",
        help="where sysfs is mounted from (default /; a fake tree in tests)",
    )
    parser.add_argument(
        "--restore-dir",
        default=None,
        metavar="DIR",
        help="folder of the record (default $STATE_DIRECTORY, else /var/lib/ecoserve when "
        "writable, else $XDG_STATE_HOME/ecoserve)",
    )
    add_alias(parser, "--state-dir", "--restore-dir")
    parser.add_argument(
        "--force",
        action="store_true",
        help="restore even if the process that wrote the record is still running",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from devices.base import DeviceError
    from devices.restore_record import RestoreRecord
    from devices.sysfs import SysfsRoot

    record = RestoreRecord(SysfsRoot(args.sysfs_root), args.restore_dir)
    if not record.exists:
        print(f"nothing to restore: no record at {record.path}")
        return 0
    owner = record.owner_alive()
    if owner is not None and not args.force:
        print(
            f"ecoserve restore: the process that wrote {record.path} (pid {owner}) is still "
            "running and restores the clocks itself when it stops; --force restores now"
        )
        return 1
    try:
        clocks = record.restore()
    except ValueError as exc:
        print(f"ecoserve restore: {exc}; delete it once the clocks are checked by hand")
        return 1
    except DeviceError as exc:
        print(f"ecoserve restore: {exc}")
        return 1
    print(f"restored from {record.path}:")
    for clock in clocks:
        print(f"  {clock.describe()}")
    return 0
