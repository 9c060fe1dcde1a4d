"""Batch and tune an existing PyTorch inference function with one decorator.

Runs as it is: a built-in CNN on the virtual Jetson Xavier NX (no hardware, no
downloads). 32 client threads send requests; the engine batches them, measures each
window's energy and latency, and EcoGD moves the CPU frequency, GPU frequency and batch
size. At the end it prints what the tuner did.

    python examples/decorator_quickstart.py
"""

from __future__ import annotations

import threading
import time

import torch

import eco_edge_infer
from ecoserve.models.builtin import SmallCNN, example_input

model = SmallCNN()


@eco_edge_infer.inference_method(
    device="virtual:xavier-nx",
    tuner="ecogd",
    window_requests=48,  # short windows so a one-minute demo shows several decisions
    warmup_requests=8,
    max_wait_s=0.02,
)
@torch.inference_mode()
def classify(images: torch.Tensor) -> torch.Tensor:
    """An ordinary batch inference function: (N, 3, 32, 32) in, N class indices out."""
    return model(images).argmax(dim=1)


def client(seconds: float, period: float, results: list[int]) -> None:
    image = example_input(model)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        results.append(int(classify(image)))  # one item in, that item's answer out
        time.sleep(period)


def main(seconds: float = 20.0, clients: int = 32) -> None:
    results: list[int] = []
    threads = [
        threading.Thread(target=client, args=(seconds, 0.01, results)) for _ in range(clients)
    ]
    with classify:  # starts the engine; stops it and restores the device on exit
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runtime = classify.runtime
        reports = list(runtime.controller.reports)
        space = runtime.controller.space
    print(f"served {len(results)} requests, {runtime.counters.batches} batches")
    print(
        f"{'window':>6} {'phase':>8} {'cost':>6} {'J/req':>8} {'lat ms':>7}  cpu MHz  gpu MHz  batch"
    )
    for r in reports:
        v = space.values(r.config)
        print(
            f"{r.index:>6} {r.phase:>8} {r.cost:6.3f} {r.energy_per_request_j:8.4f} "
            f"{r.latency_mean_s * 1e3:7.1f}  {v['cpu_freq_hz'] / 1e6:7.0f}  {v['gpu_freq_hz'] / 1e6:7.0f}  {int(v['batch_size']):5d}"
        )
    if reports:
        best = min(reports, key=lambda r: r.cost)
        print(f"best window: cost {best.cost:.3f} at {space.values(best.config)}")


if __name__ == "__main__":
    main()
