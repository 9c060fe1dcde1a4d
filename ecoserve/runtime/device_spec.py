"""Opening a device from a spec string (``--device``).

Specs:
- ``virtual:BOARD`` — the virtual device on BOARD's twin (``xavier-nx``, ``agx-xavier``,
  ``nano``, ``orin``): no hardware touched; the default everywhere a test or a laptop runs.
- ``virtual:analytic`` / ``virtual:analytic:BOARD`` — the stated analytic model instead of
  the twin fitted to measured data.
- ``sysfs`` — the real cpufreq/devfreq knobs and the best meter found under ``sysfs_root``;
  one process at a time per root (``devices.board_lock``).
- ``none`` — no frequency knobs (batch-size-only tuning) with an estimated meter.
- ``auto`` — ``sysfs`` when discovery finds a frequency knob it can write, else ``none``.
"""

from __future__ import annotations

import logging

from devices.base import Device, NullActuator
from devices.boards import PROFILES, get_profile
from twins.base import AnalyticTwin, DeviceTwin
from twins.fitted import fitted_boards, load_twin
from twins.virtual_device import VirtualDevice

log = logging.getLogger(__name__)

DEVICE_SPECS = ("virtual:BOARD", "virtual:analytic[:BOARD]", "sysfs", "none", "auto")


def load_board_twin(board: str, noise: float | None = None) -> DeviceTwin:
    """The twin fitted to measured data when the board has one, else the analytic model."""
    if board in fitted_boards():
        return load_twin(board, noise=noise)
    twin = AnalyticTwin(get_profile(board))
    if noise is not None:
        twin.noise = noise
    return twin


def open_device(
    spec: str = "virtual:xavier-nx",
    sysfs_root: str = "/",
    meter: str = "auto",
    restore_dir: str | None = None,
) -> Device:
    """The device a spec names. For ``sysfs``: the board's tuner lock is taken (another
    live holder: ``ClocksInUseError`` naming it), clocks left changed by a process that died
    are restored first (``devices.restore_record``), and the clocks' state is recorded
    before the first write; lock and record live in ``restore_dir`` (default: see
    ``default_restore_dir``). Clocks that would not go back, or all of them when the record
    cannot be read, are left alone (their knobs frozen, with the reason and the fix) rather
    than refused: a daemon that would not start would restart forever under systemd."""
    kind, _, rest = spec.partition(":")
    if kind == "virtual":
        board = rest or "xavier-nx"
        if board.startswith("analytic"):
            _, _, board_name = board.partition(":")
            return VirtualDevice(AnalyticTwin(get_profile(board_name or "xavier-nx")))
        if board not in PROFILES:
            raise ValueError(
                f"unknown virtual board {board!r}; choose one of {', '.join(sorted(PROFILES))}"
            )
        return VirtualDevice(load_board_twin(board))
    if kind == "auto" and not rest:
        from devices.discovery import discover

        writable = any(k.writable for k in discover(sysfs_root).knobs)
        return open_device("sysfs" if writable else "none", sysfs_root, meter, restore_dir)
    if kind == "sysfs":
        from devices.board_lock import take_board_lock
        from devices.discovery import open_sysfs_actuator
        from devices.meters import open_meter
        from devices.restore_record import recover
        from devices.sysfs import SysfsRoot

        lock = take_board_lock(sysfs_root, restore_dir)  # before anything reads the clocks
        try:
            root = SysfsRoot(sysfs_root)
            recovery = recover(root, restore_dir)  # before reading the clocks as "the originals"
            for message in recovery.messages():
                log.warning("%s", message)
            actuator = open_sysfs_actuator(root)
            actuator.follow(recovery)  # what it could not put back or read is left alone
            return Device(f"sysfs:{sysfs_root}", actuator, open_meter(meter, sysfs_root), lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
    if kind == "none":
        from devices.meters import open_meter

        return Device(
            "none", NullActuator(), open_meter("estimate" if meter == "auto" else meter, sysfs_root)
        )
    raise ValueError(f"unknown device spec {spec!r}; accepted forms: {', '.join(DEVICE_SPECS)}")
