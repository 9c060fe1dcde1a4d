"""The virtual device: an actuator and a meter backed by a device twin.

It lets a laptop or CI run the real runtime with no hardware. Pinned frequencies are
"applied" by remembering them; each batch's measured wall time is stretched by the twin's
slowdown at those frequencies relative to the maximum, and energy is the twin's power
integrated over wall-clock time (busy while a batch runs, idle otherwise).

With ``twin_pace`` a batch lasts at least the twin's own absolute batch time at those clocks
(its model's, e.g. MobileNet on a Nano), not the host's time stretched: a virtual Nano is
then as slow as the twin's Nano whatever the host's CPU, so boards of different kinds rank
as they do in the replay. A host slower than the twin still sets the pace (the time cannot
be shortened).

Knobs handed to the OS (the DVFS tuner) follow the governor models of ``twins.governors``,
the ones the virtual-time replay runs, here in wall-clock time: idle between batches, busy
through each batch. The measured time of a batch stands for its time at maximum clocks;
once it is known (``end_batch``) the batch is run under the governors from its start, and
that run's length and energy are what the runtime waits for and the meter counts (the
meter holds at the batch's start until then). As with pinned clocks, the board stays busy
until the runtime releases the batch, at the clocks the governors hold by then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from devices.base import Actuator, Device, PowerMeter
from ecoserve.core.knobs import Knob
from twins.base import DeviceTwin
from twins.governors import GovernedClocks


class _Run(NamedTuple):
    """A governed batch once planned: it ends at ``end``, drawing ``watts`` on average."""

    end: float
    watts: float


class VirtualBoard:
    """What the actuator, the meter and the batch hooks share: clocks, activity, joules.

    One lock and one clock keep them consistent: every change first brings the energy and
    the governors up to now at the clocks that were in force.
    """

    def __init__(
        self,
        twin: DeviceTwin,
        clock: Callable[[], float] = time.monotonic,
        *,
        twin_pace: bool = False,
    ) -> None:
        self.twin = twin
        self.clock = clock
        self.twin_pace = twin_pace
        self.clocks = GovernedClocks(twin)
        self._lock = threading.Lock()
        self._joules = 0.0
        self._last = clock()
        self._batch: int | None = None  # the size of the batch running, None when idle
        self._start = self._last
        self._run: _Run | None = None

    # -- time -----------------------------------------------------------------------------
    def _advance(self) -> float:
        """Count the energy since the last call and move the governors; returns now."""
        now = self.clock()
        if now <= self._last:
            return now
        batch = self._batch
        if batch is not None and self.clocks.governed:
            run = self._run
            if run is None:  # its clocks are known once its measured time is (end_batch)
                return now
            upto = min(now, run.end)
            if upto > self._last:
                self._joules += run.watts * (upto - self._last)
                self._last = upto
            if now <= run.end:
                return now
        # pinned clocks, idle, or a governed batch the runtime has not released yet
        freqs = self.clocks.freqs()
        busy = 0.0 if batch is None else 1.0
        self._joules += self.twin.power(freqs, busy, batch=batch) * (now - self._last)
        self._last = now
        if not self.clocks.governed:
            return now
        if batch is None:
            self.clocks.idle(now)
        else:
            self.clocks.busy(now, batch)
        return now

    def energy_joules(self) -> float:
        with self._lock:
            self._advance()
            return self._joules

    # -- knobs ----------------------------------------------------------------------------
    def set_clocks(self, values: Mapping[str, float], governed: frozenset[str]) -> None:
        with self._lock:
            now = self._advance()
            self.clocks.apply(values, governed)
            if self._batch is None:  # a knob handed over now starts counting idle time now
                self.clocks.idle(now)

    def freqs(self) -> dict[str, float]:
        with self._lock:
            self._advance()
            return self.clocks.freqs()

    # -- batches --------------------------------------------------------------------------
    def begin_batch(self, batch_size: int) -> None:
        with self._lock:
            self._start = self._advance()
            self._batch = batch_size
            self._run = None

    def end_batch(self, batch_size: int, measured_s: float) -> float:
        """The batch took ``measured_s`` at full speed; the seconds it still has to run.

        Its work, in the twin's batches at maximum clocks, is ``measured_s`` over the twin's
        time at maximum clocks, or (``twin_pace``) at least one such batch.
        """
        with self._lock:
            twin = self.twin
            fastest = twin.batch_time(batch_size, twin.max_freqs())
            work = measured_s / fastest if fastest > 0 else 0.0
            if self.twin_pace and fastest > 0:
                work = max(1.0, work)
            if not self.clocks.governed:
                seconds = work * twin.batch_time(batch_size, self.clocks.freqs())
                return max(0.0, seconds - measured_s)
            if work <= 0:  # nothing to stretch
                self._run = _Run(self._start, 0.0)
                return 0.0

            def power(freqs: Mapping[str, float]) -> float:
                return twin.power(freqs, 1.0, batch=batch_size)

            seconds, joules = self.clocks.run_batch(batch_size, self._start, work, power)
            self._run = _Run(self._start + seconds, joules / seconds)
            now = self._advance()
            return max(0.0, self._run.end - now)

    def batch_done(self) -> None:
        with self._lock:
            self._advance()
            self._batch = None
            self._run = None


class VirtualActuator(Actuator):
    """Remembers pinned values; knobs handed to the OS follow the board's governor models."""

    def __init__(self, board: VirtualBoard) -> None:
        self._board = board
        self._knobs = board.twin.knobs()
        self._initial = {k.name: k.values[-1] for k in self._knobs}
        self._values = dict(self._initial)
        self.governed: frozenset[str] = frozenset()
        board.set_clocks(self._values, self.governed)

    def knobs(self) -> list[Knob]:
        return list(self._knobs)

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        owned = {k.name: k for k in self._knobs}
        for name, value in values.items():
            if name in owned and name not in governed:
                knob = owned[name]
                self._values[name] = knob.values[knob.index_of(value)]
        self.governed = frozenset(n for n in governed if n in owned)
        self._board.set_clocks(self._values, self.governed)

    def current(self) -> dict[str, float]:
        """The clocks in force now: pinned values, or what the governors chose by now."""
        return self._board.freqs()

    def restore(self) -> None:
        self._values = dict(self._initial)
        self.governed = frozenset()
        self._board.set_clocks(self._values, self.governed)


class TwinMeter(PowerMeter):
    """The twin's power integrated over the board's clock; busy between batch hooks."""

    estimated = True

    def __init__(self, board: VirtualBoard) -> None:
        self.board = board
        self.source = f"twin:{board.twin.name}"

    def energy_joules(self) -> float:
        return self.board.energy_joules()


class VirtualDevice(Device):
    def __init__(
        self,
        twin: DeviceTwin,
        clock: Callable[[], float] = time.monotonic,
        *,
        twin_pace: bool = False,
    ) -> None:
        board = VirtualBoard(twin, clock, twin_pace=twin_pace)
        super().__init__(f"virtual:{twin.name}", VirtualActuator(board), TwinMeter(board))
        self.twin = twin
        self.board = board

    def begin_batch(self, batch_size: int) -> None:
        self.board.begin_batch(batch_size)

    def end_batch(self, batch_size: int, measured_s: float) -> float:
        return self.board.end_batch(batch_size, measured_s)

    def batch_done(self) -> None:
        """Called once the stretched batch is over: the board goes idle."""
        self.board.batch_done()
