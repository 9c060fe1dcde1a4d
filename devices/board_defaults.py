"""The clocks to put back when no restore record can say what they were.

A record cut short by a power cut, or edited by hand into nonsense, cannot tell the pinned
values from the originals, so nothing reads them off the board. What is left is what the
board boots with: each CPU policy and the GPU under their usual governors over the full
range of the board's profile (``devices.boards``), or a table the user gives, in the
record's own format (a JSON list of clocks, or an object with a ``clocks`` list, such as a
record saved on a sibling board). A Jetson's power mode then caps the range again with
``nvpmodel -m N``.
"""

from __future__ import annotations

import json
from pathlib import Path

from devices.base import DeviceError
from devices.boards import PROFILES, BoardProfile
from devices.cpufreq import CPUFREQ_DIR, list_policies
from devices.cpufreq import HANDBACK_GOVERNORS as CPU_GOVERNORS
from devices.devfreq import HANDBACK_GOVERNORS as GPU_GOVERNORS
from devices.devfreq import find_devfreq_node
from devices.restore_record import ClockState
from devices.sysfs import SysfsRoot


def board_clocks(root: SysfsRoot, table: str) -> list[ClockState]:
    """The clocks ``table`` names: a board profile's defaults, or a JSON file of clocks."""
    if table in PROFILES:
        return profile_defaults(root, PROFILES[table])
    path = Path(table)
    if not path.is_file():
        raise ValueError(
            f"--from-board {table!r} is neither a board profile ({', '.join(sorted(PROFILES))}) "
            "nor a JSON file of clocks"
        )
    return read_table(path)


def profile_defaults(root: SysfsRoot, profile: BoardProfile) -> list[ClockState]:
    """Each CPU policy and the GPU found under ``root``, governed over the profile's range.

    ValueError when the board is not that profile's (another frequency table, no GPU where
    the profile has one, a GPU the profile does not name): a wrong profile would put
    limits the hardware does not have, or leave the GPU out.
    """
    clocks = []
    cpu_khz = sorted(f // 1000 for f in profile.cpu_freqs_hz)
    for index in list_policies(root):
        rel = f"{CPUFREQ_DIR}/policy{index}"
        _same_table(root, f"{rel}/scaling_available_frequencies", cpu_khz, profile)
        governor = _governor(root, f"{rel}/scaling_available_governors", CPU_GOVERNORS)
        clocks.append(ClockState("cpufreq", rel, governor, min(cpu_khz), max(cpu_khz)))
    gpu = find_devfreq_node(root, profile.gpu_node_names)
    if gpu is None and find_devfreq_node(root) is not None:
        raise ValueError(f"this board's GPU is not one {profile.name} has; {_PICK}")
    if gpu is not None:
        hz = sorted(profile.gpu_freqs_hz)
        _same_table(root, f"{gpu}/available_frequencies", hz, profile)
        governor = _governor(root, f"{gpu}/available_governors", GPU_GOVERNORS)
        clocks.append(ClockState("devfreq", gpu, governor, min(hz), max(hz)))
    if not clocks:
        raise ValueError(f"no clock of {profile.name} under {root.root}")
    return clocks


_PICK = "give this board's own profile (`ecoserve devices` guesses it) or a JSON file of clocks"


def _same_table(root: SysfsRoot, rel: str, expected: list[int], profile: BoardProfile) -> None:
    if root.exists(rel) and sorted(set(root.read_ints(rel))) != expected:
        raise ValueError(f"{root.show(rel)} is not the table of {profile.name}; {_PICK}")


def _governor(root: SysfsRoot, listing: str, preferred: tuple[str, ...]) -> str:
    offered = root.read_words(listing) if root.exists(listing) else []
    found = next((g for g in preferred if g in offered), None)
    if found is None:
        raise DeviceError(
            f"{root.show(listing)} offers none of {', '.join(preferred)}; give a table of clocks"
        )
    return found


def read_table(path: Path) -> list[ClockState]:
    """Clocks from a JSON file: a list of clocks, or an object with a ``clocks`` list."""
    try:
        data = json.loads(path.read_text())
        items = data["clocks"] if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ValueError("expected a non-empty list of clocks")
        return [ClockState(**c) for c in items]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} is not a table of clocks ({type(exc).__name__}: {exc}); each clock is "
            '{"kind": "cpufreq"|"devfreq", "rel": DIR, "governor": G, "min": N, "max": N}'
        ) from None
