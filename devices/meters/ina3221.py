"""Jetson on-board power monitors (TI INA3221), read from sysfs and integrated in the background.

Two kernel drivers expose the same chips differently:

- ``ina3221`` hwmon driver (JetPack 5 and later), under
  ``sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmonN/`` with, per channel c = 1..3,
  ``in{c}_label`` (rail name), ``in{c}_input`` (mV) and ``curr{c}_input`` (mA). There is no
  power file, so P = V × I. ``in4..in7`` are shunt voltages and their sum, not rails.
- ``ina3221x`` iio driver (JetPack 4), under ``sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/
  iio:deviceK/`` with, per channel n = 0..2, ``rail_name_{n}``, ``in_power{n}_input`` (mW),
  ``in_voltage{n}_input`` (mV) and ``in_current{n}_input`` (mA).

The rails overlap: on most boards one rail (``VDD_IN``, or ``POM_5V_IN`` on the Nano) is the
whole board and the others are parts of it, so summing every rail double-counts. The
default therefore measures the board-total rail where there is one, and otherwise sums the
rails of the first monitor only (AGX Orin: ``1-0040``; its ``1-0041`` rail is a sub-rail).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devices.base import DeviceError
from devices.meters._read import ReadText, read_number, read_text
from devices.meters.sampling import MIN_RATE_HZ, SampledPowerMeter

#: Rails that carry the whole board's input power, in order of preference.
BOARD_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")

HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"

# "NC" (not connected) as a word of its own: matches "NC", "NC_1", "CH2_NC" but not "VDD_SYNC".
_NOT_CONNECTED = re.compile(r"(?<![A-Z])NC(?![A-Z])")

_FIX = (
    "INA3221 sysfs files are normally world-readable; check the board's udev rules or run as root."
)


@dataclass(frozen=True)
class Rail:
    """One measured rail: where its numbers live and how to turn them into milliwatts."""

    label: str
    #: "hwmon" (JetPack 5+) or "iio" (JetPack 4).
    driver: str
    #: I2C device name, e.g. "7-0040"; rails of one chip share it.
    device: str
    channel: int
    #: The chip's directory (hwmonN or iio:deviceK).
    directory: Path
    power_path: Path | None
    voltage_path: Path | None
    current_path: Path | None

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file this rail is read from."""
        return tuple(p for p in (self.power_path, self.voltage_path, self.current_path) if p)

    def read_mw(self, read: ReadText = read_text) -> float:
        """Power now in mW: the power file when the driver has one, else mV × mA / 1000."""
        if self.power_path is not None:
            return read_number(self.power_path, read, _FIX)
        if self.voltage_path is None or self.current_path is None:
            raise DeviceError(f"rail {self.label} at {self.directory} has no readable power")
        mv = read_number(self.voltage_path, read, _FIX)
        ma = read_number(self.current_path, read, _FIX)
        return mv * ma / 1000.0


def is_not_connected(label: str) -> bool:
    """True for rails labelled as not connected ("NC"), which carry no real load."""
    return bool(_NOT_CONNECTED.search(label.upper()))


def _device_name(chip_dir: Path, levels_up: int) -> str:
    """The I2C device name (``<bus>-<addr>``) that owns a hwmon/iio directory."""
    return chip_dir.parents[levels_up - 1].name


def _hwmon_rails(root: Path, read: ReadText) -> list[Rail]:
    rails: list[Rail] = []
    for chip in sorted(root.glob(HWMON_GLOB)):
        device = _device_name(chip, 2)  # <dev>/hwmon/hwmonN
        for c in (1, 2, 3):  # in4..in7 are shunt voltages / their sum, never rails
            volt, curr = chip / f"in{c}_input", chip / f"curr{c}_input"
            if not (volt.exists() and curr.exists()):
                continue
            enable = chip / f"in{c}_enable"
            if enable.exists() and _read_str(enable, read) == "0":
                continue
            label_path = chip / f"in{c}_label"
            label = _read_str(label_path, read) if label_path.exists() else f"{device}:ch{c}"
            if is_not_connected(label):
                continue
            rails.append(Rail(label, "hwmon", device, c, chip, None, volt, curr))
    return rails


def _iio_rails(root: Path, read: ReadText) -> list[Rail]:
    rails: list[Rail] = []
    for chip in sorted(root.glob(IIO_GLOB)):
        device = _device_name(chip, 1)  # <dev>/iio:deviceK
        for n in (0, 1, 2):
            name_path = chip / f"rail_name_{n}"
            if not name_path.exists():
                continue
            label = _read_str(name_path, read)
            if is_not_connected(label):
                continue
            power = chip / f"in_power{n}_input"
            volt = chip / f"in_voltage{n}_input"
            curr = chip / f"in_current{n}_input"
            rails.append(
                Rail(
                    label,
                    "iio",
                    device,
                    n,
                    chip,
                    power if power.exists() else None,
                    volt if volt.exists() else None,
                    curr if curr.exists() else None,
                )
            )
    return rails


def _read_str(path: Path, read: ReadText) -> str:
    try:
        return read(path).strip()
    except OSError as exc:
        raise DeviceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def find_ina3221_rails(
    root: str | os.PathLike[str] = "/", read: ReadText = read_text
) -> list[Rail]:
    """Every connected INA3221 rail under ``root``, hwmon driver first, sorted by device."""
    base = Path(root)
    return _hwmon_rails(base, read) + _iio_rails(base, read)


def default_rails(rails: Sequence[Rail]) -> list[Rail]:
    """The rails that together are the board's power, without double-counting.

    A board-total rail wins; otherwise the rails of the first monitor chip are summed
    (on the AGX Orin the three ``1-0040`` rails make the total and ``1-0041`` is inside them).
    """
    for wanted in BOARD_TOTAL_RAILS:
        for rail in rails:
            if rail.label.upper() == wanted:
                return [rail]
    if not rails:
        return []
    first = rails[0]
    return [r for r in rails if r.driver == first.driver and r.device == first.device]


def select_rails(rails: Sequence[Rail], names: Sequence[str] | None) -> list[Rail]:
    """Pick rails by label (case-insensitive), or the default total when ``names`` is None."""
    if names is None:
        return default_rails(rails)
    chosen: list[Rail] = []
    for name in names:
        match = next((r for r in rails if r.label == name), None) or next(
            (r for r in rails if r.label.upper() == name.strip().upper()), None
        )
        if match is None:
            known = ", ".join(r.label for r in rails) or "none"
            raise DeviceError(f"no INA3221 rail named {name!r}; available: {known}")
        if match not in chosen:
            chosen.append(match)
    return chosen


class Ina3221Meter(SampledPowerMeter):
    """Board (or chosen rails') energy from INA3221 readings sampled at ``rate_hz``.

    ``source`` names the rails, e.g. ``ina3221:VDD_IN`` or
    ``ina3221:VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0``, so a report says what was measured.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        rails: Sequence[str] | None = None,
        rate_hz: float = MIN_RATE_HZ,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
        read_text: ReadText = read_text,
    ) -> None:
        found = find_ina3221_rails(root, read_text)
        if not found:
            raise DeviceError(
                f"no INA3221 power monitor under {Path(root)} "
                f"(looked for {HWMON_GLOB} and {IIO_GLOB})"
            )
        self.rails: list[Rail] = select_rails(found, rails)
        if not self.rails:
            raise DeviceError("no INA3221 rails selected")
        self._read = read_text
        super().__init__(
            self._read_watts_now,
            rate_hz=rate_hz,
            clock=clock,
            source="ina3221:" + "+".join(r.label for r in self.rails),
            estimated=False,
            start=start,
        )

    def read_rails_mw(self) -> dict[str, float]:
        """Each selected rail's power now (mW), for diagnostics."""
        return {r.label: r.read_mw(self._read) for r in self.rails}

    def _read_watts_now(self) -> float:
        return sum(r.read_mw(self._read) for r in self.rails) / 1000.0
