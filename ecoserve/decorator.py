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
import contextlib
import functools
import inspect
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from devices.base import Device
from devices.safety import guarded
from ecoserve.background.job import BackgroundJob
from ecoserve.background.work import BackgroundWork
from ecoserve.core.assembly import RENAMED_SETTINGS, EngineSettings
from ecoserve.runtime.build import build_runtime
from ecoserve.runtime.device_spec import open_device
from ecoserve.runtime.driver import Runtime
from ecoserve.runtime.tuning_state import TuningState

log = logging.getLogger("ecoserve.decorator")

#: Longest a call waits for its answer by default, as the daemon's request timeout: a hung
#: function raises TimeoutError in its callers instead of blocking them for good.
DEFAULT_CALL_TIMEOUT_S = 30.0


class InferenceMethod:
    """The callable a decorated function becomes."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        settings: EngineSettings,
        device: Device | None = None,
        *,
        timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
        watchdog_s: float | None = 60.0,
        stop_timeout_s: float = 30.0,
        state_file: str | None = None,
        background: str | BackgroundJob | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds or None, got {timeout_s}")
        if watchdog_s is not None and not watchdog_s > 0:
            raise ValueError(f"watchdog_s must be > 0 seconds or None, got {watchdog_s}")
        self.fn = fn
        self.settings = settings
        #: Longest a call waits for its answer (TimeoutError after; None: forever, asked for).
        self.timeout_s = timeout_s
        #: No batch finished for this long: the clocks go back to the governors.
        self.watchdog_s = watchdog_s
        #: Longest ``stop()`` waits for queued work before giving up on it.
        self.stop_timeout_s = stop_timeout_s
        #: Where the tuner state is saved after each window and at stop, and resumed from.
        self.state_file = state_file
        #: A job for the idle time between batches (a spec or a job), made at start.
        self.background_spec = background
        self.background: BackgroundWork | None = None
        self._device = device
        # The device's guard (restore on exit and signals, the watchdog), held while running.
        self._guard = contextlib.ExitStack()
        self._is_async = inspect.iscoroutinefunction(fn)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runtime: Runtime | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> InferenceMethod:
        """Start the engine (idempotent). Called automatically on the first call.

        The device is opened and guarded here, in the caller's thread (signal handlers can
        only be set from the main thread), and the runtime is built with the guard and the
        state file wired in; it then runs on a private event loop thread.
        """
        with self._lock:
            if self._runtime is not None:
                return self
            s = self.settings
            device = self._device or open_device(s.device, s.sysfs_root, s.meter, s.restore_dir)
            try:
                # Restore the clocks at exit and on SIGTERM/SIGINT (a script killed by
                # SIGTERM skips atexit), and hand them back when no batch finishes in time.
                guard = self._guard.enter_context(guarded(device, self.watchdog_s))
            except BaseException:
                if self._device is None:
                    device.close()
                raise
            state = TuningState(self.state_file, _function_name(self.fn), s.device, s.baseline_path)
            hooks: dict[str, Any] = {}
            if self.background_spec is not None:
                try:
                    self.background = BackgroundWork(
                        self.background_spec, s.restore_dir, tuner=s.tuner, seed=s.seed
                    )
                except BaseException:
                    self._guard.close()
                    if self._device is None:
                        device.close()
                    raise
                hooks = {"harvest": self.background.make_policy, "background": self.background.step}
            loop = asyncio.new_event_loop()
            ready: concurrent.futures.Future[Runtime] = concurrent.futures.Future()

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    runtime = build_runtime(
                        self.fn, s, device=device, run_inline=True, guard=guard, state=state,
                        **hooks,
                    )  # fmt: skip
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
            try:
                self._runtime = ready.result()
            except BaseException:
                self._guard.close()
                device.close()
                raise
            self._loop, self._thread = loop, thread
            atexit.register(self.stop)
        return self

    def stop(self, drain: bool = True) -> None:
        """Finish queued work (unless ``drain`` is False), restore the device, stop the loop."""
        with self._lock:
            runtime, loop, thread = self._runtime, self._loop, self._thread
            self._runtime = self._loop = self._thread = None
        if runtime is None or loop is None or thread is None:
            return
        atexit.unregister(self.stop)
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
            if self.background is not None:
                self.background.close()  # the job's last checkpoint
            self._guard.close()  # the watchdog stops, the clocks go back, handlers go
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


def _function_name(fn: Callable[[Any], Any]) -> str:
    """What a decorated function's state file is tagged with: ``module.qualname``."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


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
    timeout_s: float | None = DEFAULT_CALL_TIMEOUT_S,
    watchdog_s: float | None = 60.0,
    stop_timeout_s: float = 30.0,
    state_file: str | None = None,
    background: str | BackgroundJob | None = None,
    **settings: Any,
) -> Any:
    """Decorate a batch inference function; see the module docstring.

    Keyword arguments are ``EngineSettings`` fields, e.g. ``device="virtual:xavier-nx"``,
    ``tuner="ecogd"``, ``max_batch=16``, ``window_requests=64``. A ``Device`` object may
    be passed as ``device`` too. ``timeout_s`` bounds each call (TimeoutError; 30 s by
    default, ``None`` waits forever), ``watchdog_s``
    hands the clocks back when no batch finishes for that long (a hung function),
    ``stop_timeout_s`` bounds ``stop()``, and ``state_file`` keeps the tuner's state across
    restarts (saved after each window and at stop, resumed at start, as the daemon's).
    ``background`` (``"builtin:digits-finetune"``, ``"package.module:factory"`` or a job
    object) runs a job in the idle time between batches, as ``ecoserve serve --background``
    does, checkpointed under ``restore_dir``; ``method.background.describe()`` shows it.
    """
    for old, new in RENAMED_SETTINGS.items():
        if old in settings:
            warnings.warn(
                f"inference_method({old}=...) is deprecated; use {new}=", FutureWarning, 2
            )
            settings.setdefault(new, settings.pop(old))
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
            state_file=state_file,
            background=background,
        )

    return wrap(fn) if fn is not None else wrap
