"""Serving a Triton-layout model repository: each model on its queue, resident under a budget.

``RepositoryModels`` turns the scanned repository into what the service runs: one
``ServedModel`` and one batch function per model. Each batch function brings its model onto
the board through ``Residency`` (loading it again, or moving it back from host memory, if
the budget had evicted it), so the time a swap-in takes is spent inside the batch and
counted in its requests' latency and the batch's energy, as a client sees it. It is also
the repository's ``ModelControl``: load and unload over HTTP and gRPC come here.

One version of each model is served: its queue's batch size and the board's clocks are
tuned for it, and two versions of one model would be two models to tune. A version policy
that chooses several is refused at start with the fix.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ecoserve.models.loader import LoadedModel
from ecoserve.models.repository import (
    TORCH_DTYPES,
    ModelConfig,
    RepositoryError,
    load_version,
    scan_repository,
)
from ecoserve.models.residency import (
    MemoryBudgetError,
    ModelTooLargeError,
    Residency,
    ResidencyError,
    Swap,
    board_residency,
    format_bytes,
    parse_memory,
)
from ecoserve.server.metrics import ServerMetrics
from ecoserve.server.oip_stats import InferenceStatistics
from ecoserve.server.served import ServedModel
from ecoserve.server.service import ServiceError
from ecoserve.server.tensors import TensorSpec

log = logging.getLogger("ecoserve.server")

BatchFunction = Callable[[Any], Any]


def one_version(config: ModelConfig) -> int:
    """The version served; RepositoryError when the policy chose several."""
    if len(config.versions) != 1:
        raise RepositoryError(
            f"model {config.name!r} ({config.config_path}): version_policy chooses versions "
            f"{list(config.versions)}, and ecoserve serves one version of each model (its "
            "batch size and the clocks are tuned for it); use version_policy: { latest: { "
            "num_versions: 1 } } or { specific: { versions: N } }",
            config.name,
            "version_policy",
        )
    return config.versions[0]


class RepositoryModels:
    """The repository's models as served models, their batch functions, load and unload."""

    def __init__(
        self,
        configs: Sequence[ModelConfig],
        budget_bytes: int | None = None,
        onnx_providers: str | None = None,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.versions = {c.name: one_version(c) for c in configs}
        self.onnx_providers = onnx_providers
        #: Where the models live: the accelerator's memory (and host RAM behind it, on a
        #: discrete GPU), under ``budget_bytes`` or the board's memory less a reserve.
        self.residency: Residency[LoadedModel] = board_residency(self._load, budget_bytes)
        self.metrics: ServerMetrics | None = None
        self.served: dict[str, ServedModel] = {}
        for c in configs:
            self.residency.register(c.name)
            spec = TensorSpec(c.input.dims, TORCH_DTYPES[c.input.datatype])
            self.served[c.name] = ServedModel(
                name=c.name,
                queue=c.name,
                model=None,
                spec=spec,
                max_batch=c.batch_bound,
                statistics=InferenceStatistics(engine_queue=c.name),
                versions=(str(self.versions[c.name]),),
                triton_config=c.to_json(),
                repository=c,
            )

    def _load(self, name: str) -> LoadedModel:
        config = self.configs[name]
        return load_version(config, self.versions[name], self.onnx_providers)

    # -- what the service runs ------------------------------------------------------------
    def batch_functions(self) -> dict[str, BatchFunction]:
        """One per model's queue: bring the model in (counting the swap), run the batch."""
        return {name: self._batch_fn(name) for name in self.served}

    def _batch_fn(self, name: str) -> BatchFunction:
        def run(batch: Any) -> Any:
            with self.residency.use(name) as swap:
                self._count(swap)
                return swap.model.batch_fn(batch)

        return run

    def _count(self, swap: Swap[LoadedModel]) -> None:
        """A swap-in (load or move) is reported: its time, and the memory it holds."""
        if swap.source == "resident":
            return
        served = self.served[swap.name]
        served.load_times_s.append(swap.load_s)
        resident = self.residency.loaded()
        if self.metrics is not None:
            entry = resident.get(swap.name)
            self.metrics.model_loaded(swap.name, swap.load_s, entry.bytes if entry else 0)
            for gone in swap.evicted:
                self.metrics.model_unloaded(gone)
        log.info(
            "model %s brought in from %s in %.3f s%s",
            swap.name,
            swap.source,
            swap.load_s,
            f" (evicted {', '.join(swap.evicted)})" if swap.evicted else "",
        )

    def load_all(self) -> None:
        """Bring every model in once at start, in name order (blocks): its size is measured,
        and a model that alone exceeds the budget is refused before anything is served."""
        for name in self.served:
            try:
                with self.residency.use(name) as swap:
                    self._count(swap)
            except ModelTooLargeError as exc:
                raise RepositoryError(str(exc), name, "memory") from None

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        """Report to ``metrics`` from now on, starting with the loads made at start."""
        self.metrics = metrics
        resident = self.residency.loaded()
        for name, served in self.served.items():
            entry = resident.get(name)
            for seconds in served.load_times_s:
                metrics.model_loaded(name, seconds, entry.bytes if entry else 0)

    # -- ModelControl ---------------------------------------------------------------------
    async def load(self, name: str) -> None:
        """Load (or reload) a model of the repository; 400 with the figures if it cannot fit."""
        served = self.served[name]
        try:
            await asyncio.to_thread(self._load_now, name)
        except ModelTooLargeError as exc:
            raise ServiceError(400, f"failed to load {name!r}: {exc}", "invalid") from None
        except MemoryBudgetError as exc:
            raise ServiceError(
                503, f"cannot load {name!r} now: {exc}", "unavailable", {"Retry-After": "1"}
            ) from None
        except Exception as exc:  # a corrupt file replaced since start: say so, keep serving
            raise ServiceError(
                400, f"failed to load {name!r}: {type(exc).__name__}: {exc}", "invalid"
            ) from None
        served.loaded, served.reason = True, None

    def _load_now(self, name: str) -> None:
        with self.residency.use(name) as swap:
            self._count(swap)

    async def unload(self, name: str, drain_s: float = 30.0) -> None:
        """Refuse new requests for it, let the accepted ones finish, then free its memory."""
        served = self.served[name]
        served.loaded, served.reason = False, "unloaded by request"
        deadline = time.monotonic() + drain_s
        while served.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        while True:
            try:
                await asyncio.to_thread(self.residency.unload, name)
                break
            except ResidencyError:  # a batch still holds it: wait for the batch
                if time.monotonic() > deadline:
                    raise ServiceError(
                        503, f"{name!r} is still running; unload again later", "unavailable"
                    ) from None
                await asyncio.sleep(0.01)
        if self.metrics is not None:
            self.metrics.model_unloaded(name)

    def describe(self) -> dict[str, Any]:
        return self.residency.describe()


def open_repository(settings: Any) -> RepositoryModels:
    """Scan, check and load ``settings.model_repository`` under its memory budget.

    RepositoryError (a ValueError) names the model, the field and the fix; a budget that
    cannot be read is a ValueError too.
    """
    budget = None if settings.memory_budget is None else parse_memory(settings.memory_budget)
    configs = scan_repository(settings.model_repository, onnx_providers=settings.onnx_providers)
    models = RepositoryModels(configs, budget, settings.onnx_providers)
    models.load_all()
    log.info(
        "model repository %s: %d models (%s) under a memory budget of %s",
        settings.model_repository,
        len(configs),
        ", ".join(models.served),
        format_bytes(models.residency.budget_bytes),
    )
    return models
