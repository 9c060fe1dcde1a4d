"""``@inference_method``: batch and tune an existing inference function unchanged.

The wrapped function receives a batch (tensors of one shape stacked along a new first
dimension, anything else as a list) and returns one result per item. Callers keep
calling it with one item: a plain call blocks until that item's batch has run and
returns the item's own result; if the function is ``async def``, the call returns an
awaitable. The engine runs on a background event loop thread, started on first use
(or by ``start()``) and stopped by ``stop()`` or at interpreter exit.

A face over the real-time runtime: may import ``ecoserve.runtime``, the core's settings and
``devices`` (the exit handlers), never the simulator or the server.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from devices.base import Device
from devices.composite import install_restore_handlers
from devices.watchdog import Watchdog
from ecoserve.core.assembly import EngineSettings
from ecoserve.runtime.build import build_runtime
from ecoserve.runtime.driver import Runtime

log = logging.getLogger("ecoserve.decorator")


class InferenceMethod:
    """The callable a decorated function becomes."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        settings: EngineSettings,
        device: Device | None = None,
        *,
        timeout_s: float | None = None,
        watchdog_s: float | None = 60.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        functools.update_wrapper(self, fn)
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds or None, got {timeout_s}")
        if watchdog_s is not None and not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0 seconds or None, got {watchdog_s}")
        self.fn = fn
        self.settings = settings
        #: Longest a call waits for its answer (TimeoutError after; None: forever).
        self.timeout_s = timeout_s
        #: No batch finished for this long: the clocks go back to the governors.
        self.watchdog_s = watchdog_s
        #: Longest ``stop()`` waits for queued work before giving up on it.
        self.stop_timeout_s = stop_timeout_s
        self._watchdog: Watchdog | None = None
        self._device = device
        self._is_async = inspect.iscoroutinefunction(fn)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runtime: Runtime | None = None
        self._uninstall_handlers: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> InferenceMethod:
        """Start the engine (idempotent). Called automatically on the first call."""
        with self._lock:
            if self._runtime is not None:
                return self
            loop = asyncio.new_event_loop()
            ready: concurrent.futures.Future[Runtime] = concurrent.futures.Future()

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    runtime = build_runtime(
                        self.fn, self.settings, device=self._device, run_inline=True
                    )
                    loop.run_until_complete(runtime.start())
                except BaseException as exc:
                    ready.set_exception(exc)
                    loop.close()
                    return
                ready.set_result(runtime)
                loop.run_forever()
                loop.close()

            thread = threading.Thread(target=run, name=f"ecoserve:{self.fn.__name__}", daemon=True)
            thread.start()
            self._runtime = ready.result()
            self._loop, self._thread = loop, thread
            atexit.register(self.stop)
            # A script killed by SIGTERM skips atexit: put the clocks back on signals too.
            actuator = self._runtime.device.actuator
            self._uninstall_handlers = install_restore_handlers(actuator)
            if self.watchdog_s is not None:
                # A batch function that hangs must not keep the clocks pinned.
                self._watchdog = Watchdog(actuator, self.watchdog_s)
                self._watchdog.start()
                self._runtime.heartbeat = self._watchdog.feed
        return self

    def stop(self, drain: bool = True) -> None:
        """Finish queued work (unless ``drain`` is False), restore the device, stop the loop."""
        with self._lock:
            runtime, loop, thread = self._runtime, self._loop, self._thread
            self._runtime = self._loop = self._thread = None
        if runtime is None or loop is None or thread is None:
            return
        atexit.unregister(self.stop)
        if self._uninstall_handlers is not None:
            self._uninstall_handlers()
            self._uninstall_handlers = None
        stuck = False
        try:
            stopping = asyncio.run_coroutine_threadsafe(runtime.stop(drain=drain), loop)
            try:
                stopping.result(timeout=self.stop_timeout_s)
            except concurrent.futures.TimeoutError:
                stuck = True  # the loop's thread is inside the batch function and not back
                stopping.cancel()
                log.error(
                    "%s: queued work did not finish within %.0f s (a hung batch function?); "
                    "restoring the device and leaving the stuck call behind",
                    self.fn.__name__,
                    self.stop_timeout_s,
                )
        finally:
            if self._watchdog is not None:
                self._watchdog.stop(timeout=2.0)
                self._watchdog = None
            runtime.device.close()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=0.5 if stuck else 10)  # a daemon thread: it cannot hold exit

    def __enter__(self) -> InferenceMethod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def runtime(self) -> Runtime:
        """The running engine (starts it if needed): controller, reports, counters."""
        return self.start()._runtime  # type: ignore[return-value]

    # -- calls ----------------------------------------------------------------------------
    def submit(self, item: Any) -> concurrent.futures.Future[Any]:
        """Queue one item from any thread; the future resolves to its own result."""
        runtime = self.runtime
        loop = self._loop
        assert loop is not None
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def enqueue() -> None:
            if result.done():  # the caller gave up before it was queued
                return
            try:
                inner = runtime.submit_nowait(item)
            except Exception as exc:
                result.set_exception(exc)
                return
            inner.add_done_callback(lambda f: _copy_outcome(f, result))
            # A caller that gives up (timeout) drops its item if it has not been batched yet.
            result.add_done_callback(
                lambda f: loop.call_soon_threadsafe(inner.cancel) if f.cancelled() else None
            )

        loop.call_soon_threadsafe(enqueue)
        return result

    def __call__(self, item: Any) -> Any:
        if self._is_async:
            return self._call_async(item)
        future = self.submit(item)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"{self.fn.__name__} gave no answer within {self.timeout_s} s "
                "(timeout_s of @inference_method)"
            ) from None

    async def _call_async(self, item: Any) -> Any:
        future = self.submit(item)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"{self.fn.__name__} gave no answer within {self.timeout_s} s "
                "(timeout_s of @inference_method)"
            ) from None


def _copy_outcome(source: asyncio.Future[Any], target: concurrent.futures.Future[Any]) -> None:
    if target.done():  # the caller gave up already
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def inference_method(
    fn: Callable[[Any], Any] | None = None,
    *,
    device: Device | str | None = None,
    timeout_s: float | None = None,
    watchdog_s: float | None = 60.0,
    stop_timeout_s: float = 30.0,
    **settings: Any,
) -> Any:
    """Decorate a batch inference function; see the module docstring.

    Keyword arguments are ``EngineSettings`` fields, e.g. ``device="virtual:xavier-nx"``,
    ``tuner="ecogd"``, ``max_batch=16``, ``window_requests=64``. A ``Device`` object may
    be passed as ``device`` too. ``timeout_s`` bounds each call (TimeoutError), ``watchdog_s``
    hands the clocks back when no batch finishes for that long (a hung function), and
    ``stop_timeout_s`` bounds ``stop()``.
    """
    unknown = set(settings) - set(EngineSettings.field_names())
    if unknown:
        raise TypeError(
            f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(EngineSettings.field_names())}"
        )
    if isinstance(device, str):
        settings["device"] = device
        device = None
    settings.setdefault("device", "auto")
    engine_settings = EngineSettings(**settings)

    def wrap(f: Callable[[Any], Any]) -> InferenceMethod:
        return InferenceMethod(
            f,
            engine_settings,
            device=device,
            timeout_s=timeout_s,
            watchdog_s=watchdog_s,
            stop_timeout_s=stop_timeout_s,
        )

    return wrap(fn) if fn is not None else wrap
