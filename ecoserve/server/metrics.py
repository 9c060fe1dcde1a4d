"""Prometheus metrics of one daemon, in a registry of its own.

A registry per app (not prometheus-client's global one) keeps two apps in one process (the
tests, an embedding application) from colliding. ``ServerMetrics`` is also the runtime's
observer: batches, windows, rejections and configuration changes arrive through its hooks.
Names follow Prometheus conventions: ``ecoserve_`` prefix, base units, ``_total`` counters.

Two phases are labelled apart: ``controller_phase`` (baseline, tuning: whether E0/L0 are
being measured) and ``tuner_phase`` (what the tuner is doing: scan, climb, ...). The label
``phase`` that carried both is still exported, equal to the new label of its metric, for
one release (``DEPRECATED_PHASE``), so dashboards and alerts can move over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ecoserve.core.controller import WindowReport
from ecoserve.runtime.driver import BatchStats, RuntimeObserver

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

#: Outcomes of ``POST /v1/infer`` and ``/v2/.../infer`` requests.
OUTCOMES = (
    "ok", "invalid", "too_large", "rejected", "timeout", "error", "unavailable",
    "unauthorized", "throttled",
)  # fmt: skip


#: Knob name -> (metric name, help) of the gauge that shows its applied value, in its unit.
KNOB_METRICS = {
    "batch_size": ("ecoserve_config_batch_size_items", "Batch size in force (items)"),
    "split_point": (
        "ecoserve_config_split_point_stages",
        "Model stages run here before the rest goes to the next tier",
    ),
    "cascade_threshold": (
        "ecoserve_config_cascade_threshold_ratio",
        "Confidence the small model needs to answer here (0..1)",
    ),
}
#: Frequency knobs (names ending in ``_hz``) share one gauge with a ``knob`` label.
CLOCK_METRIC = "ecoserve_config_clock_hertz"
#: The old label beside ``tuner_phase`` / ``controller_phase``; goes in the next release.
DEPRECATED_PHASE = "phase"


class _LiveCollector(Collector):
    """Values read when scraped: queue length, meter joules, readiness, tuner phase, warnings."""

    def __init__(
        self,
        queue_depth: Callable[[], int],
        joules: Callable[[], float],
        ready: Callable[[], bool],
        tuner: Callable[[], tuple[str, str]] | None = None,
        warnings: Callable[[], int] | None = None,
    ) -> None:
        self.queue_depth = queue_depth
        self.joules = joules
        self.ready = ready
        self.tuner = tuner
        self.warnings = warnings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "ecoserve_queue_length", "Requests waiting to be batched", value=self.queue_depth()
        )
        yield CounterMetricFamily(
            "ecoserve_energy_joules",
            "Energy measured by the device's meter since start (idle included)",
            value=self.joules(),
        )
        yield GaugeMetricFamily(
            "ecoserve_ready",
            "1 once the baseline is known and the daemon takes traffic",
            value=1.0 if self.ready() else 0.0,
        )
        if self.tuner is not None:
            name, phase = self.tuner()
            info = GaugeMetricFamily(
                "ecoserve_tuner_info",
                "The tuner in charge and its tuner_phase (baseline, pinned, scan, research, "
                "climb, probe, settled, tuning); always 1 (label phase: deprecated copy)",
                labels=["tuner", "tuner_phase", DEPRECATED_PHASE],
            )
            info.add_metric([name, phase, phase], 1.0)
            yield info
        if self.warnings is not None:
            yield GaugeMetricFamily(
                "ecoserve_device_warnings",
                "Distinct warnings the device's actuator has given (a knob it cannot write)",
                value=float(self.warnings()),
            )


class _BackgroundCollector(Collector):
    """The background job's figures, read when scraped from its ``describe()``."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        # not ``describe``: prometheus-client calls a collector's ``describe`` for its names
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        d = self.read()
        job = str(d.get("job", ""))
        for name, text, key in (
            ("ecoserve_background_steps", "Background steps completed", "steps"),
            ("ecoserve_background_items", "Items the background job processed", "items"),
            ("ecoserve_background_energy_joules", "Energy measured during background steps", "joules"),
        ):  # fmt: skip
            counter = CounterMetricFamily(name, text, labels=["job"])
            counter.add_metric([job], float(d.get(key) or 0.0))
            yield counter
        busy = GaugeMetricFamily(
            "ecoserve_background_busy_ratio",
            "Share of the time since start spent in background steps",
            labels=["job"],
        )
        busy.add_metric([job], float(d.get("busy_share") or 0.0))
        yield busy
        paused = GaugeMetricFamily(
            "ecoserve_background_paused",
            "1 while the job is paused after a failure",
            labels=["job"],
        )
        paused.add_metric([job], 1.0 if d.get("paused") else 0.0)
        yield paused
        metric = GaugeMetricFamily(
            "ecoserve_background_metric",
            "The job's own figure, by name (the fine-tune's held-out accuracy)",
            labels=["job", "name"],
        )
        for key, value in (d.get("metric") or {}).items():
            metric.add_metric([job, str(key)], float(value))
        yield metric


class ServerMetrics(RuntimeObserver):
    """Every metric the daemon exports; also the runtime observer that feeds most of them."""

    def __init__(self, max_batch: int = 16) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ecoserve_requests", "Inference requests by outcome", ["outcome"], registry=r
        )
        # Labelled children looked up once and kept: ``labels()`` validates and locks on
        # every call, which the request path would otherwise pay several times a request.
        self._by_outcome = {outcome: self.requests.labels(outcome) for outcome in OUTCOMES}
        self.request_latency = Histogram(
            "ecoserve_request_duration_seconds",
            "Time from receiving a successful inference request to its response",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "ecoserve_queue_wait_seconds",
            "Time a request waited in the queue before its batch started",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_execution = Histogram(
            "ecoserve_batch_execution_seconds",
            "Time one batch ran (model call plus device slowdown)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch} - {0})
        self.batch_size = Histogram(
            "ecoserve_batch_size", "Requests per batch run", buckets=sizes, registry=r
        )
        self.batch_fill = Histogram(
            "ecoserve_batch_fill_ratio",
            "Batch size run divided by the configured batch size",
            buckets=(0.125, 0.25, 0.5, 0.75, 0.99, 1.0),
            registry=r,
        )
        self.batches = Counter(
            "ecoserve_batches", "Batches run by outcome", ["outcome"], registry=r
        )
        self._batches_ok = self.batches.labels("ok")
        self._batches_failed = self.batches.labels("error")
        self.batch_energy = Counter(
            "ecoserve_batch_energy_joules",
            "Energy measured while batches ran (active accounting)",
            registry=r,
        )
        self.completed = Counter(
            "ecoserve_completed", "Items the model answered successfully", registry=r
        )
        self.rejections = Counter(
            "ecoserve_rejections",
            "Requests refused by the runtime, by reason",
            ["reason"],
            registry=r,
        )
        for reason in ("queue_full", "stopping"):
            self.rejections.labels(reason)
        self.clock = Gauge(
            CLOCK_METRIC, "Frequency applied to each clock knob (Hz)", ["knob"], registry=r
        )
        self.knobs = {
            name: Gauge(metric, text, registry=r) for name, (metric, text) in KNOB_METRICS.items()
        }
        self.window_cost = Gauge(
            "ecoserve_window_cost", "Normalised cost of the last window", registry=r
        )
        self.window_energy = Gauge(
            "ecoserve_window_energy_per_request_joules",
            "Mean energy per request in the last window",
            registry=r,
        )
        self.window_latency = Gauge(
            "ecoserve_window_latency_mean_seconds",
            "Mean request latency (arrival to completion) in the last window",
            registry=r,
        )
        self.window_p50 = Gauge(
            "ecoserve_window_latency_p50_seconds", "Median latency in the last window", registry=r
        )
        self.window_p99 = Gauge(
            "ecoserve_window_latency_p99_seconds", "p99 latency in the last window", registry=r
        )
        self.window_rate = Gauge(
            "ecoserve_window_arrival_rate_per_second",
            "Requests arriving per second in the last window",
            registry=r,
        )
        self.windows = Counter(
            "ecoserve_windows",
            "Windows closed, by controller_phase (baseline, tuning; label phase: deprecated copy)",
            ["controller_phase", DEPRECATED_PHASE],
            registry=r,
        )
        self.faults = Counter(
            "ecoserve_device_faults",
            "Faults survived: a knob frozen after a failed write (knob = its name, reason = "
            "the errno), the meter (knob = meter) or the engine (knob = engine)",
            ["knob", "reason"],
            registry=r,
        )
        self.tuner_switches = Counter(
            "ecoserve_config_changes", "Configurations applied (tuner moves and pins)", registry=r
        )
        self.connections_refused = Counter(
            "ecoserve_connections_refused",
            "Connections turned away at --max-connections: full = answered 503 with "
            "Retry-After (every other connection busy), idle = a silent one closed for room",
            ["reason"],
            registry=r,
        )
        self.refused_connections = {"full": 0, "idle": 0}
        for reason in self.refused_connections:
            self.connections_refused.labels(reason)
        self.model_requests = Counter(
            "ecoserve_model_requests",
            "Inference requests by model and outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.model_request_latency = Histogram(
            "ecoserve_model_request_duration_seconds",
            "Time from receiving a successful inference request to its response, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_batch_energy = Counter(
            "ecoserve_model_batch_energy_joules",
            "Energy measured while each model's batches ran",
            ["model"],
            registry=r,
        )
        self.model_batch_size = Gauge(
            "ecoserve_model_config_batch_size_items",
            "Batch size in force for each model's queue",
            ["model"],
            registry=r,
        )
        self.model_loads = Counter(
            "ecoserve_model_loads",
            "Times each model was loaded (at start, on demand after an eviction, or asked)",
            ["model"],
            registry=r,
        )
        self.model_load_seconds = Counter(
            "ecoserve_model_load_seconds",
            "Time spent loading each model (a swap-in is counted in its request's latency)",
            ["model"],
            registry=r,
        )
        self.model_resident_bytes = Gauge(
            "ecoserve_model_resident_bytes",
            "Memory each model holds while loaded (measured at load; 0 when unloaded)",
            ["model"],
            registry=r,
        )
        self.tenant_requests = Counter(
            "ecoserve_tenant_requests",
            "Inference requests by tenant and outcome (throttled: past its share or rate)",
            ["tenant", "outcome"],
            registry=r,
        )
        # Per-model and per-tenant children by their labels, made on first use: the names
        # are the served models' and the configured tenants', a bounded set.
        self._model_children: dict[tuple[str, str], Counter] = {}
        self._model_latency: dict[str, Histogram] = {}
        self._tenant_children: dict[tuple[str, str], Counter] = {}
        #: Engine queue -> the model it serves, for the per-model series (one model: empty).
        self.queue_models: dict[str, str] = {}
        self._batch_knobs: dict[str, str] = {}
        self._live: _LiveCollector | None = None
        self._configured_batch = 1

    def name_queues(self, queue_models: dict[str, str], batch_knobs: dict[str, str]) -> None:
        """Label batches and batch-size knobs with their model (a board of several models)."""
        self.queue_models = dict(queue_models)
        self._batch_knobs = dict(batch_knobs)

    def bind(
        self,
        queue_depth: Callable[[], int],
        joules: Callable[[], float],
        ready: Callable[[], bool],
        tuner: Callable[[], tuple[str, str]] | None = None,
        warnings: Callable[[], int] | None = None,
    ) -> None:
        """Attach the values read at scrape time (once the runtime exists)."""
        if self._live is not None:
            self.registry.unregister(self._live)
        self._live = _LiveCollector(queue_depth, joules, ready, tuner, warnings)
        self.registry.register(self._live)

    def bind_background(self, describe: Callable[[], Mapping[str, Any]]) -> None:
        """Export the background job's figures (read from ``describe`` at each scrape)."""
        self.registry.register(_BackgroundCollector(describe))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- request outcomes (called by the handlers) ----------------------------------------
    def request_done(
        self,
        outcome: str,
        seconds: float | None = None,
        model: str | None = None,
        tenant: str | None = None,
    ) -> None:
        """One request's outcome; with ``model`` (and ``tenant``) also in their series."""
        counter = self._by_outcome.get(outcome)
        if counter is None:
            counter = self._by_outcome[outcome] = self.requests.labels(outcome)
        counter.inc()
        timed = seconds if outcome == "ok" else None
        if timed is not None:
            self.request_latency.observe(timed)
        if model is not None:
            key = (model, outcome)
            child = self._model_children.get(key)
            if child is None:
                child = self._model_children[key] = self.model_requests.labels(model, outcome)
            child.inc()
            if timed is not None:
                latency = self._model_latency.get(model)
                if latency is None:
                    latency = self._model_latency[model] = self.model_request_latency.labels(model)
                latency.observe(timed)
        if tenant is not None:
            key = (tenant, outcome)
            child = self._tenant_children.get(key)
            if child is None:
                child = self._tenant_children[key] = self.tenant_requests.labels(tenant, outcome)
            child.inc()

    def model_loaded(self, model: str, seconds: float, resident_bytes: int) -> None:
        self.model_loads.labels(model).inc()
        self.model_load_seconds.labels(model).inc(seconds)
        self.model_resident_bytes.labels(model).set(resident_bytes)

    def model_unloaded(self, model: str) -> None:
        self.model_resident_bytes.labels(model).set(0)

    def connection_refused(self, reason: str) -> None:
        """A connection turned away at the connection limit (called by the protocol)."""
        self.connections_refused.labels(reason).inc()
        self.refused_connections[reason] = self.refused_connections.get(reason, 0) + 1

    # -- RuntimeObserver ------------------------------------------------------------------
    def on_batch(self, stats: BatchStats) -> None:
        (self._batches_ok if stats.ok else self._batches_failed).inc()
        self.batch_size.observe(stats.size)
        self.batch_fill.observe(min(1.0, stats.size / max(1, self._configured_batch)))
        self.batch_execution.observe(stats.run_s)
        for wait in stats.queue_wait_s:
            self.queue_wait.observe(wait)
        if stats.ok:
            self.batch_energy.inc(stats.energy_j)
            self.completed.inc(len(stats.latencies_s))
            model = self.queue_models.get(stats.queue)
            if model is not None:
                self.model_batch_energy.labels(model).inc(stats.energy_j)

    def on_window(self, report: WindowReport) -> None:
        self.windows.labels(report.phase, report.phase).inc()
        self.window_cost.set(report.cost)
        self.window_energy.set(report.energy_per_request_j)
        self.window_latency.set(report.latency_mean_s)
        self.window_p50.set(report.latency_p50_s)
        self.window_p99.set(report.latency_p99_s)
        self.window_rate.set(report.arrival_rate)

    def on_reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def on_fault(self, where: str, reason: str) -> None:
        self.faults.labels(where, reason).inc()

    def on_config(self, values: dict[str, float]) -> None:
        self.tuner_switches.inc()
        self._configured_batch = int(values.get("batch_size", self._configured_batch))
        for name, value in values.items():
            if name in self._batch_knobs:
                self.model_batch_size.labels(self._batch_knobs[name]).set(value)
            elif name in self.knobs:
                self.knobs[name].set(value)
            elif name.endswith("_hz"):
                self.clock.labels(name).set(value)
