"""The inference service behind the HTTP routes: one runtime, its models, their lifecycle.

Routes only parse and format; this object submits items to the runtime (on the queue of
the model asked for), applies the
per-request deadline, turns engine failures into ``ServiceError`` with the HTTP status a
client should see, warms the runtime up so the baseline exists without traffic, and
drains it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from devices.base import Device
from devices.safety import guarded
from ecoserve.background.work import BackgroundWork
from ecoserve.core.batching import QueueFullError
from ecoserve.core.engine import DEFAULT_QUEUE, QueueSpec
from ecoserve.core.knobs import THRESHOLD
from ecoserve.models.loader import LoadedModel
from ecoserve.models.residency import MemoryBudgetError
from ecoserve.runtime.build import build_runtime
from ecoserve.runtime.device_spec import open_device
from ecoserve.runtime.driver import BatchFunction, Runtime, RuntimeObserver, RuntimeStoppedError
from ecoserve.runtime.tuning_state import TuningState
from ecoserve.server.metrics import ServerMetrics
from ecoserve.server.observers import Observers
from ecoserve.server.oip_stats import InferenceStatistics
from ecoserve.server.served import ServedModel
from ecoserve.server.settings import ServeSettings
from ecoserve.server.tensors import TensorSpec
from ecoserve.server.tier_bridge import TierBridge
from ecoserve.server.tier_jobs import TierJob, with_tier_jobs

if TYPE_CHECKING:
    from ecoserve.server.admission import TenantAdmission
    from ecoserve.server.repository_serving import RepositoryModels

log = logging.getLogger("ecoserve.server")


class ServiceError(Exception):
    """A request failed in a way the client should see as ``status`` with ``detail``."""

    def __init__(
        self, status: int, detail: str, outcome: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.outcome = outcome
        self.headers = headers or {}

    def __reduce__(self) -> tuple[type[ServiceError], tuple[int, str, str, dict[str, str]]]:
        # Picklable whole, so a fleet board's refusal reaches the ingress as itself.
        return (type(self), (self.status, self.detail, self.outcome, self.headers))


def queue_spec(served: ServedModel) -> QueueSpec:
    """A repository model's queue: its batch bound, and what its ``config.pbtxt`` says of
    batching (preferred sizes, the longest queue delay) and of its latency target."""
    config = served.repository
    if config is None:
        return QueueSpec.for_model(served.queue, max_batch=served.max_batch)
    return QueueSpec.for_model(
        served.queue,
        max_batch=served.max_batch,
        slo_latency_s=config.slo_latency_s,
        max_wait_s=config.max_queue_delay_s if config.dynamic_batching else None,
        batch_sizes=config.preferred_batch_sizes or None,
    )


class _Expired(Exception):
    """A request's deadline passed (its own type: a model's TimeoutError is a model error)."""


def _expire(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Fail a request's unfinished futures at its deadline; the runtime skips done ones."""
    for f in futures:
        if not f.done():
            f.set_exception(_Expired())


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task that raised says so in the log (the baseline is left to traffic)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %r", task.get_name(), task.exception())


def find_served(
    models: Mapping[str, ServedModel], default: ServedModel, name: str | None
) -> ServedModel:
    """The model called ``name`` (None: ``default``); 404 naming the served ones otherwise."""
    if name is None:
        return default
    try:
        return models[name]
    except KeyError:
        known = ", ".join(sorted(models))
        raise ServiceError(
            404, f"no model named {name!r}; this daemon serves {known}", "invalid"
        ) from None


class InferenceService:
    """One runtime serving one model (``--model``) or a repository's models, each on its queue.

    With a ``repository`` it serves the repository's models, each on its own queue; without
    one it serves ``model`` on the engine's default queue.
    """

    def __init__(
        self,
        settings: ServeSettings,
        model: LoadedModel | None,
        device: Device | None = None,
        repository: RepositoryModels | None = None,
    ) -> None:
        self.settings = settings
        #: The ``--model`` (None for a repository, whose models the residency holds).
        self.model = model
        self.repository = repository
        if repository is not None:
            self.models = dict(repository.served)
        else:
            if model is None:
                raise ValueError("a service needs a model or a model repository")
            spec = TensorSpec(
                None if model.preprocess else (settings.input_shape or model.input_shape),
                model.input_dtype,
            )
            only = ServedModel(
                settings.served_name,
                DEFAULT_QUEUE,
                model,
                spec,
                settings.max_batch,
                InferenceStatistics(),
            )
            self.models = {only.name: only}
        #: Tenants' admission by share of the board (``--tenants``); set by the app.
        self.admission: TenantAdmission | None = None
        #: The background job (``--background``); set by the app before start.
        self.background: BackgroundWork | None = None
        first = next(iter(self.models.values()))
        #: The first (for ``--model``, the only) model: the one ``/v1/infer`` serves by default.
        self.default = first
        self.name = first.name
        self.spec = first.spec
        self.metrics = ServerMetrics(max_batch=max(m.max_batch for m in self.models.values()))
        self.statistics = first.statistics
        self.runtime: Runtime | None = None
        self.tier: TierBridge | None = None
        self.draining = False
        self.started_at = time.time()
        self._device = device
        self._baseline_task: asyncio.Task[None] | None = None
        self._drained = False
        self._closed = False
        self._exit_stack = contextlib.ExitStack()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the device, resume saved state, start the runtime and the baseline at start.

        With a next tier, the runtime's batch function is the tier node's, so requests keep
        the engine's queue, batching and drain; the node's client is made here, on the
        serving loop it belongs to.
        """
        s = self.settings
        stats: list[RuntimeObserver] = [m.statistics for m in self.models.values()]
        if self.admission is not None:
            stats.append(self.admission)
        observers = Observers([self.metrics, *stats])
        fns: BatchFunction | Mapping[str, BatchFunction]
        queues = None
        hooks: dict[str, Any] = {}
        engine_settings = s
        if self.repository is not None:  # one queue per model
            fns = self.repository.batch_functions()
            queues = [queue_spec(m) for m in self.models.values()]
            self.metrics.name_queues(
                {m.queue: m.name for m in self.models.values()},
                {q.batch_knob: q.name for q in queues},
            )
            self.repository.bind_metrics(self.metrics)
        else:
            fns = await self._local_batch_fn()
        if self.tier is not None:
            params = {**s.tuner_params, **self.tier.tuner_params(s.tuner)}
            engine_settings = replace(s, tuner_params=params)
            hooks = {
                "extra_actuator": self.tier.actuator,
                "context_source": self.tier.context,
                "error_source": self.tier.take_errors,
            }
        if self.background is not None:
            self.metrics.bind_background(self.background.describe)
            hooks["harvest"] = self.background.make_policy
            hooks["background"] = self.background.step
        device = self._device or open_device(s.device, s.sysfs_root, s.meter, s.restore_dir)
        # Restore the knobs on SIGTERM/SIGINT/exit and, if the engine stalls, hand them back.
        guard = self._exit_stack.enter_context(guarded(device, s.watchdog_s))
        runtime = build_runtime(
            fns,
            engine_settings,
            queues=queues,
            device=device,
            observer=observers,
            guard=guard,
            state=TuningState(s.state_file, s.served_identity, s.device, s.baseline_path),
            **hooks,
        )
        self.runtime = runtime
        if self.admission is not None:
            self.admission.batch_size = lambda: runtime.batch_size
        self.metrics.bind(
            lambda: runtime.queue_depth,
            runtime.energy_joules,
            lambda: self.ready,
            tuner=lambda: (runtime.tuner_name(), runtime.tuner_phase()),
            warnings=lambda: len(runtime.device_warnings()),
        )
        await runtime.start()
        if s.next_tier is not None and s.tier_mode == "cascade" and s.cascade_threshold is not None:
            await runtime.pin({THRESHOLD: s.cascade_threshold})
        if s.baseline_at_start and not runtime.ready:
            self._baseline_task = asyncio.create_task(
                self._measure_baseline_at_start(), name="ecoserve-baseline-at-start"
            )
            self._baseline_task.add_done_callback(_log_failure)

    async def _local_batch_fn(self) -> BatchFunction:
        """The ``--model``'s batch function: through the next tier's node where there is one
        (made here, on the serving loop its client belongs to), with ``/v1/tier`` jobs."""
        s = self.settings
        assert self.model is not None
        batch_fn = self.model.batch_fn
        if s.next_tier is not None:
            self.tier = await TierBridge.start(s, self.model)
            batch_fn = self.tier.run_batch
        if s.serve_tier:  # /v1/tier computations queue, time out and are metered here too
            batch_fn = with_tier_jobs(batch_fn)
        return batch_fn

    @property
    def resumed(self) -> list[str]:
        """What was resumed from the state file at start."""
        return self.runtime.resumed if self.runtime is not None else []

    @property
    def ready(self) -> bool:
        r = self.runtime
        return r is not None and r.ready and r.alive and not self.draining

    async def drain(self) -> None:
        """Refuse new work, finish every accepted request, save state (idempotent)."""
        self.draining = True
        if self._drained:
            return
        self._drained = True
        if self._baseline_task is not None:
            self._baseline_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._baseline_task
        runtime = self.runtime
        if runtime is None:
            return
        log.info("draining: %d queued, %d running", runtime.queue_depth, runtime.in_flight)
        stop = asyncio.ensure_future(runtime.stop(drain=True))
        try:
            await asyncio.wait_for(asyncio.shield(stop), self.settings.drain_timeout_s)
        except asyncio.TimeoutError:
            log.error(
                "drain timed out after %.1f s; failing what is left", self.settings.drain_timeout_s
            )
            await runtime.stop(drain=False)
            await stop
        log.info(
            "drained: %d completed, %d failed", runtime.counters.completed, runtime.counters.failed
        )

    async def close(self) -> None:
        """Drain if not yet done, then restore the device's knobs and close its meter."""
        if self._closed:
            return
        try:
            await self.drain()
        finally:
            self._closed = True
            if self.background is not None:
                self.background.close()  # its last checkpoint, before the clocks go back
            if self.tier is not None:
                await self.tier.aclose()
            self._exit_stack.close()
            if self.runtime is not None:
                self.runtime.device.close()
                log.info("device %s restored", self.runtime.device.name)

    async def _measure_baseline_at_start(self) -> None:
        """Send synthetic example items until the baseline window has closed, so the daemon
        is ready before real traffic comes (``baseline_at_start``)."""
        runtime = self.runtime
        assert runtime is not None
        try:  # one example item per model, sent to each model's queue in turn
            examples = [(m.queue, self._example(m)) for m in self.models.values()]
        except ValueError as exc:
            log.warning("no baseline at start (%s); the baseline is measured on real traffic", exc)
            return
        s = self.settings
        budget = 4 * (s.warmup_requests + (s.window_requests or 0)) + 64
        deadline = time.monotonic() + 4 * (s.window_seconds or 60.0) + 10.0
        sent = 0
        log.info("baseline at start: measuring it with synthetic items")
        while not runtime.ready and not self.draining:
            if sent >= budget or time.monotonic() > deadline:
                log.warning(
                    "baseline at start gave up after %d items; baseline left to real traffic", sent
                )
                return
            futures = []
            for queue, item in examples:
                size = runtime.engine.batch_size(queue)
                n = max(1, min(size, s.max_queue - runtime.queue_depth))
                for _ in range(n):
                    try:
                        futures.append(runtime.submit_nowait(item.clone(), queue))
                    except (QueueFullError, RuntimeStoppedError):
                        break
            sent += len(futures)
            if not futures:
                await asyncio.sleep(0.05)
                continue
            results = await asyncio.gather(*futures, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and len(errors) == len(results):
                log.warning(
                    "baseline-at-start items failed (%s); baseline left to real traffic", errors[0]
                )
                return
        if runtime.ready:
            log.info("provisional baseline from synthetic items: %s", runtime.baseline)
            # Synthetic items never queue, so their latency understates what real traffic
            # sees: keep this baseline for readiness, and measure it again at maximum on
            # the first real windows before the tuner takes over.
            await runtime.remeasure_baseline()

    def models_status(self) -> dict[str, dict[str, Any]]:
        """Each served model's figures for ``/v1/status`` (and ``ecoserve top``)."""
        runtime = self.runtime
        out: dict[str, dict[str, Any]] = {}
        for name, m in self.models.items():
            stats = m.statistics
            entry: dict[str, Any] = {
                "queue": m.queue,
                "loaded": m.loaded,
                "versions": list(m.versions),
                "max_batch": m.max_batch,
                "requests": stats.success.count + stats.fail.count,
                "items": stats.inference_count,
                "batches": stats.execution_count,
                "loads": len(m.load_times_s),
                "load_s_total": sum(m.load_times_s),
            }
            if m.reason is not None:
                entry["reason"] = m.reason
            if runtime is not None:
                entry["batch_size"] = runtime.engine.batch_size(m.queue)
            out[name] = entry
        return out

    @staticmethod
    def _example(served: ServedModel) -> Any:
        """One item to measure the baseline with: the model's own example, or zeros of the
        shape a repository model declares."""
        if served.model is not None:
            return served.model.example_item()
        shape = served.spec.shape
        if shape is None:
            raise ValueError(f"model {served.name!r} declares no input shape")
        return torch.zeros(shape, dtype=served.spec.dtype)

    # -- requests -------------------------------------------------------------------------
    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    def served(self, name: str | None = None) -> ServedModel:
        """The model called ``name`` (None: the default one); 404 when there is none."""
        return find_served(self.models, self.default, name)

    async def infer(
        self,
        items: Sequence[Any],
        timeout_s: float | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> list[Any]:
        """Run each item through the engine (batched with others); one result per item.

        ``model`` names the served model (None: the default one). ``timeout_s`` is the
        client's own deadline; the daemon's request timeout still bounds it. A ``tenant``'s
        request is first admitted by its share of the board (429 when past it).
        """
        served = self.served(model)
        admission = self.admission
        if admission is None or tenant is None:
            return await self._infer(served, items, timeout_s)
        decision = admission.admit(tenant)
        if not decision.admitted:
            why = "its rate limit" if decision.reason == "rate" else "its share of the board"
            raise ServiceError(
                429,
                f"tenant {tenant!r} is past {why}; retry later",
                "throttled",
                {"Retry-After": decision.retry_after_header},
            )
        try:
            return await self._infer(served, items, timeout_s)
        finally:
            admission.release(tenant)

    async def _infer(
        self, served: ServedModel, items: Sequence[Any], timeout_s: float | None
    ) -> list[Any]:
        if not served.loaded:
            raise ServiceError(
                400,
                f"model {served.name!r} is not loaded ({served.reason or 'unloaded'}); load it "
                f"with POST /v2/repository/models/{served.name}/load",
                "unavailable",
            )
        runtime = self.runtime
        if runtime is None or self.draining or not runtime.accepting:
            raise ServiceError(
                503, "shutting down; not accepting requests", "unavailable", self._retry()
            )
        if len(items) > self.settings.max_queue:
            raise ServiceError(
                413,
                f"request carries {len(items)} items; at most {self.settings.max_queue} "
                "(the queue bound) fit",
                "too_large",
            )
        loaded = served.model
        if loaded is not None and loaded.preprocess is not None:
            try:
                items = [loaded.preprocess(x) for x in items]
            except Exception as exc:
                raise ServiceError(
                    422, f"preprocessing rejected the input: {exc}", "invalid"
                ) from None
        served.pending += len(items)
        try:
            results = await self._run(runtime, items, timeout_s, served.queue)
        finally:
            served.pending -= len(items)
        if loaded is not None and loaded.postprocess is not None:
            try:
                results = [loaded.postprocess(r) for r in results]
            except Exception as exc:
                raise ServiceError(500, f"postprocessing failed: {exc}", "error") from None
        return results

    async def run_tier_job(self, job: Callable[[], Any]) -> Any:
        """A ``/v1/tier`` computation as one request of this daemon.

        It is admitted by the runtime (503 when full or draining), bounded by the request
        timeout, batched with the rest and measured in the batch's energy.
        """
        runtime = self.runtime
        if runtime is None or self.draining or not runtime.accepting:
            raise ServiceError(
                503, "shutting down; not accepting requests", "unavailable", self._retry()
            )
        (result,) = await self._run(runtime, [TierJob(job)], None)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _run(
        self,
        runtime: Runtime,
        items: Sequence[Any],
        timeout_s: float | None,
        queue: str = DEFAULT_QUEUE,
    ) -> list[Any]:
        """Submit every item to ``queue``, wait within the deadline; one result per item."""
        futures: list[asyncio.Future[Any]] = []
        try:
            for item in items:
                futures.append(runtime.submit_nowait(item, queue))
        except QueueFullError:
            for f in futures:
                f.cancel()
            raise ServiceError(
                503,
                "server overloaded: request queue is full; retry later",
                "rejected",
                self._retry(),
            ) from None
        except RuntimeStoppedError:
            for f in futures:
                f.cancel()
            raise ServiceError(
                503, "shutting down; not accepting requests", "unavailable", self._retry()
            ) from None
        deadline = self.settings.request_timeout_s
        if timeout_s is not None:
            deadline = timeout_s if deadline is None else min(deadline, timeout_s)
        gathered = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        # A timer that fails the futures at the deadline, rather than asyncio.wait_for, which
        # wraps every request in a task and a second future of its own.
        timer = None
        if deadline is not None:
            timer = asyncio.get_running_loop().call_later(deadline, _expire, futures)
        try:
            out = await gathered
        except _Expired:
            for f in futures:
                f.cancel()
            raise ServiceError(
                504,
                f"no result within the request timeout of {deadline} s",
                "timeout",
            ) from None
        except RuntimeStoppedError:
            raise ServiceError(
                503, "shutting down; request was not run", "unavailable", self._retry()
            ) from None
        except MemoryBudgetError as exc:  # its model could not be brought in beside the busy
            raise ServiceError(503, f"{exc}; retry later", "rejected", self._retry()) from None
        except Exception as exc:
            raise ServiceError(
                500,
                f"the model failed on this request's batch: {type(exc).__name__}: {exc}",
                "error",
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
        return [out] if len(futures) == 1 else list(out)
