"""Fan one runtime's observer hooks out to several observers (metrics, state saving)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ecoserve.core.controller import WindowReport
from ecoserve.runtime.driver import BatchStats, RuntimeObserver

log = logging.getLogger("ecoserve.server")


class Observers(RuntimeObserver):
    """Calls each observer in turn; one that raises is logged, never breaks the runtime."""

    def __init__(self, observers: Iterable[RuntimeObserver]) -> None:
        self.observers = list(observers)

    def on_batch(self, stats: BatchStats) -> None:
        for o in self.observers:
            try:
                o.on_batch(stats)
            except Exception:
                log.exception("observer %r failed on a batch", o)

    def on_window(self, report: WindowReport) -> None:
        for o in self.observers:
            try:
                o.on_window(report)
            except Exception:
                log.exception("observer %r failed on a window", o)

    def on_reject(self, reason: str) -> None:
        for o in self.observers:
            try:
                o.on_reject(reason)
            except Exception:
                log.exception("observer %r failed on a rejection", o)

    def on_config(self, values: dict[str, float]) -> None:
        for o in self.observers:
            try:
                o.on_config(values)
            except Exception:
                log.exception("observer %r failed on a configuration", o)

    def on_fault(self, where: str, reason: str) -> None:
        for o in self.observers:
            try:
                o.on_fault(where, reason)
            except Exception:
                log.exception("observer %r failed on a fault", o)
