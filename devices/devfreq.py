"""GPU clock through Linux devfreq (knob ``gpu_freq_hz``), e.g. a Jetson's integrated GPU.

The node is found by scanning ``sys/class/devfreq/*``, never by a fixed path: its location
changes with the board and the JetPack release (``17000000.gv11b``, ``57000000.gpu``,
``17000000.gpu``...). A node matches when its ``device/of_node/name`` is one of ``names``
or, failing that, when the node's own name contains one of them.

All files are in Hz. Pinning writes ``min_freq`` = ``max_freq`` in an order that never
crosses the limits (older kernels answer EINVAL when it would); it works under the default
``nvhost_podgov`` governor, which is left in place. Each pin is read back. ``restore()``
and hand-back (``governed``) put back the governor and limits found at start; when that
governor was ``userspace``, hand-back picks the first of ``HANDBACK_GOVERNORS`` offered.
A permission refusal drops the knob with one warning, as in ``devices.cpufreq``; running out
of file descriptors raises ``TransientDeviceError`` and freezes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devices.base import Actuator, DeviceError, PermissionDeniedError, TransientDeviceError
from devices.restore_record import ClockState, put_clock
from devices.sysfs import SysfsRoot, permission_warning
from ecoserve.core.knobs import GPU, Knob

log = logging.getLogger(__name__)

DEVFREQ_DIR = "sys/class/devfreq"
#: Device-tree names of NVIDIA integrated GPUs (Volta, Pascal, Ampere, Blackwell), then generic.
GPU_NAMES = ("gv11b", "gp10b", "ga10b", "gb10b", "gpu")
HANDBACK_GOVERNORS = ("nvhost_podgov", "simple_ondemand")


@dataclass(frozen=True)
class DevfreqState:
    governor: str
    min_hz: int
    max_hz: int


@dataclass(frozen=True)
class DevfreqNode:
    """One devfreq device as read from ``sys/class/devfreq/<name>``."""

    rel: str
    name: str
    #: ``device/of_node/name`` when the device comes from a device tree, else "".
    of_name: str
    table_hz: tuple[int, ...]
    governors: tuple[str, ...]
    state: DevfreqState

    def file(self, name: str) -> str:
        return f"{self.rel}/{name}"


def of_node_name(root: SysfsRoot, rel: str) -> str:
    """The device-tree name of a devfreq node's device ("" when there is none)."""
    name_rel = f"{rel}/device/of_node/name"
    try:
        return root.read_text(name_rel) if root.exists(name_rel) else ""
    except DeviceError:
        return ""


def find_devfreq_node(root: SysfsRoot, names: Sequence[str] = GPU_NAMES) -> str | None:
    """The relative path of the first node matching ``names``, or None.

    Device-tree names are tried first, in the order of ``names``, then node names that
    contain one of them: an exact ``gv11b`` beats a node merely called ``...gpu``.
    """
    nodes = root.glob(f"{DEVFREQ_DIR}/*")
    of_names = {rel: of_node_name(root, rel) for rel in nodes}
    for wanted in names:
        for rel in nodes:
            if of_names[rel] == wanted:
                return rel
    for wanted in names:
        for rel in nodes:
            if wanted in rel.rsplit("/", 1)[-1]:
                return rel
    return None


def node_rel(root: SysfsRoot, node: str) -> str:
    """A node given by name (``17000000.gv11b``) or by path, as a path relative to the root."""
    rel = node.lstrip("/") if "/" in node else f"{DEVFREQ_DIR}/{node}"
    if not root.is_dir(rel):
        raise DeviceError(f"no devfreq node at {root.show(rel)}")
    return rel


def read_node(root: SysfsRoot, rel: str) -> DevfreqNode:
    """Read what the actuator and discovery need about one node; writes nothing."""
    table_rel = f"{rel}/available_frequencies"
    if not root.exists(table_rel):
        raise DeviceError(f"{root.show(rel)} has no available_frequencies")
    table = tuple(sorted(set(root.read_ints(table_rel))))
    if not table:
        raise DeviceError(f"{root.show(table_rel)} lists no frequency")
    gov_rel = f"{rel}/available_governors"
    return DevfreqNode(
        rel=rel,
        name=rel.rsplit("/", 1)[-1],
        of_name=of_node_name(root, rel),
        table_hz=table,
        governors=tuple(root.read_words(gov_rel)) if root.exists(gov_rel) else (),
        state=read_state(root, rel),
    )


def read_state(root: SysfsRoot, rel: str) -> DevfreqState:
    return DevfreqState(
        governor=root.read_text(f"{rel}/governor"),
        min_hz=root.read_int(f"{rel}/min_freq"),
        max_hz=root.read_int(f"{rel}/max_freq"),
    )


class DevfreqActuator(Actuator):
    """Pins one devfreq node (the GPU by default) with ``min_freq`` = ``max_freq``."""

    def __init__(
        self,
        root: SysfsRoot,
        node: str | None = None,
        names: Sequence[str] = GPU_NAMES,
        *,
        knob_name: str = GPU,
    ) -> None:
        self.root = root
        if node is None:
            found = find_devfreq_node(root, names)
            if found is None:
                raise DeviceError(
                    f"no GPU devfreq node under {root.show(DEVFREQ_DIR)} "
                    f"(looked for {', '.join(names)})"
                )
            node = found
        self.node = read_node(root, node_rel(root, node))
        self._original = self.node.state
        self._knob = Knob(knob_name, tuple(float(v) for v in self.node.table_hz))
        self._lock = threading.RLock()
        self._touched = False
        self._pinned = False
        self._governed = False
        self._dropped = False
        self._frozen: str | None = None
        self._warnings: list[str] = []

    @property
    def knob_name(self) -> str:
        return self._knob.name

    @property
    def table_hz(self) -> tuple[int, ...]:
        return self.node.table_hz

    def knobs(self) -> list[Knob]:
        return [] if self._dropped else [self._knob]

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        name = self._knob.name
        with self._lock:
            if self._dropped:
                return
            try:
                if name in governed:
                    self._hand_back()
                elif name in values:
                    hz = self.node.table_hz[self._knob.index_of(values[name])]
                    got = self._pin(hz)
                    if got != hz:
                        log.debug("%s asked %d Hz, kernel set %d Hz", self.node.name, hz, got)
            except TransientDeviceError:
                raise  # out of descriptors, not a dead knob: the next apply tries again
            except DeviceError as exc:  # any other errno: freeze the knob, serving goes on
                self._drop(exc)

    def frozen(self) -> dict[str, str]:
        return {self._knob.name: self._frozen} if self._frozen is not None else {}

    def set_frequency(self, hz: float) -> int:
        """Pin to exactly ``hz`` (a table value; anything else is refused) and return the
        frequency read back."""
        if hz != int(hz) or int(hz) not in self.node.table_hz:
            valid = ", ".join(f"{v / 1e6:g}" for v in self.node.table_hz)
            raise DeviceError(
                f"{hz:g} Hz is not an operating point of {self.node.name}; "
                f"valid values (MHz): {valid}"
            )
        with self._lock:
            if self._dropped:
                raise DeviceError(self._warnings[0] if self._warnings else "GPU knob dropped")
            try:
                return self._pin(int(hz))
            except PermissionDeniedError as exc:
                self._drop(exc)
                raise

    def original_clocks(self) -> list[ClockState]:
        return [_clock(self.node.rel, self._original)]

    def current(self) -> dict[str, float]:
        with self._lock:
            if self._dropped:
                return {}
            name = "max_freq" if self._pinned else "cur_freq"
            return {self._knob.name: float(self.root.read_int(self.node.file(name)))}

    def restore(self) -> None:
        """Put back the governor, then the limits found at start; idempotent."""
        with self._lock:
            if self._touched:
                self._put_state(self._original)
                self._touched = False
            self._pinned = False
            self._governed = False

    # -- internals -------------------------------------------------------------------

    def _pin(self, hz: int) -> int:
        self._touched = True
        self.root.write_limits(self.node.file("min_freq"), self.node.file("max_freq"), hz, hz)
        self._pinned = True
        self._governed = False
        return self.root.read_int(self.node.file("max_freq"))

    def _hand_back(self) -> None:
        if self._governed:
            return
        self._touched = True
        orig = self._original
        governor = orig.governor
        if governor == "userspace":
            governor = next((g for g in HANDBACK_GOVERNORS if g in self.node.governors), governor)
        self._put_state(DevfreqState(governor, orig.min_hz, orig.max_hz))
        self._pinned = False
        self._governed = True

    def _put_state(self, state: DevfreqState) -> None:
        put_clock(self.root, _clock(self.node.rel, state))

    def _drop(self, exc: DeviceError) -> None:
        what = f"GPU frequency ({self.node.name})"
        if isinstance(exc, PermissionDeniedError):
            self._warnings.append(permission_warning(what, exc))
        else:
            self._warnings.append(f"{what} knob frozen: {exc}. Serving continues without it.")
        log.warning(self._warnings[-1])
        self._frozen = f"{exc.errno_name or 'error'}: {exc}"
        self._dropped = True
        try:
            self.restore()
        except DeviceError as err:
            log.warning("could not undo partial GPU frequency changes: %s", err)


def _clock(rel: str, state: DevfreqState) -> ClockState:
    return ClockState("devfreq", rel, state.governor, state.min_hz, state.max_hz)
