"""Per-model inference statistics in the shape of Triton's statistics extension.

Tooling that asks a Triton server for ``/v2/models/{name}/stats`` (perf_analyzer, the
clients' ``get_inference_statistics``) gets the engine's own accounting: the queue wait and
batch run time of every item as the runtime measured them, and every request's duration
and outcome as the protocol front ends measured them. Durations are integer nanoseconds,
as Triton reports them.

Triton charges each request in a batch the batch's whole compute time; so does this. The
engine times collation and the model call together, so all of it is ``compute_infer`` and
``compute_input`` / ``compute_output`` stay at zero duration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ecoserve.runtime.driver import BatchStats, RuntimeObserver

NS_PER_S = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(round(seconds * NS_PER_S)) * count

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchSizeStats:
    count: int = 0
    ns: int = 0


@dataclass
class InferenceStatistics(RuntimeObserver):
    """Counts fed by the runtime (batches) and the front ends (requests)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)
    #: Count only this engine queue's batches (one model of several); None: every batch.
    engine_queue: str | None = None

    # -- the front ends -------------------------------------------------------------------
    def request_done(self, ok: bool, seconds: float) -> None:
        (self.success if ok else self.fail).add(seconds)

    # -- RuntimeObserver ------------------------------------------------------------------
    def on_batch(self, stats: BatchStats) -> None:
        if not stats.ok or (self.engine_queue is not None and stats.queue != self.engine_queue):
            return
        self.execution_count += 1
        self.inference_count += stats.size
        self.last_inference_ms = int(time.time() * 1000)
        for wait in stats.queue_wait_s:
            self.queue.add(wait)
        self.compute_infer.add(stats.run_s, stats.size)
        by_size = self.batches.setdefault(stats.size, BatchSizeStats())
        by_size.count += 1
        by_size.ns += int(round(stats.run_s * NS_PER_S))

    # -- the extension's body -------------------------------------------------------------
    def model_stats(self, name: str, version: str) -> dict[str, Any]:
        """One entry of ``model_stats`` (the same dict fills the gRPC message)."""
        none = Duration(self.compute_infer.count, 0).as_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": none,
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": none,
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": s.count, "ns": 0},
                    "compute_infer": {"count": s.count, "ns": s.ns},
                    "compute_output": {"count": s.count, "ns": 0},
                }
                for size, s in sorted(self.batches.items())
            ],
        }
