"""Batch and tune an existing PyTorch inference function with one decorator.

Runs as it is: a built-in CNN on the virtual Jetson Xavier NX (no hardware, no
downloads). 32 client threads send requests; the engine batches them, measures each
window's energy and latency, and EcoGD moves the CPU frequency, GPU frequency and batch
size. At the end it prints what the tuner did. Real-time windows on a busy laptop are noisy
(the costs move by tens of percent for the same configuration); `ecoserve replay` is where
tuning quality is measured.

    python examples/decorator_quickstart.py
"""

from __future__ import annotations

import threading
import time

import torch

import eco_edge_infer
from ecoserve.models.builtin import SmallCNN, example_input

# One intra-op thread: on a small box torch's default (one per core) fights the client
# threads for the cores, and the measured latencies turn into noise the tuner chases.
torch.set_num_threads(1)
model = SmallCNN()


@eco_edge_infer.inference_method(
    device="virtual:xavier-nx",
    tuner="ecogd",
    window_requests=400,  # shorter than the paper's so a 20 s demo shows many decisions
    warmup_requests=40,
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
        reports = runtime.windows(10_000)
        space = runtime.space
    print(
        f"served {len(results)} requests in {runtime.counters.batches} batches, {len(reports)} windows"
    )
    print(
        f"{'window':>6} {'phase':>8} {'cost':>6} {'J/req':>8} {'lat ms':>7}  cpu MHz  gpu MHz  batch"
    )
    shown = reports if len(reports) <= 12 else reports[:6] + reports[-6:]
    for r in shown:
        v = space.values(r.config)
        print(
            f"{r.index:>6} {r.phase:>8} {r.cost:6.3f} {r.energy_per_request_j:8.4f} "
            f"{r.latency_mean_s * 1e3:7.1f}  {v['cpu_freq_hz'] / 1e6:7.0f}  {v['gpu_freq_hz'] / 1e6:7.0f}  {int(v['batch_size']):5d}"
        )
    tuning = [r for r in reports if r.phase == "tuning"]
    if len(tuning) >= 10:
        first = sum(r.cost for r in tuning[:5]) / 5
        last = sum(r.cost for r in tuning[-5:]) / 5
        print(f"mean cost of the first 5 tuning windows {first:.3f}, of the last 5 {last:.3f}")
        print(f"now running at {runtime.engine.values()}")


if __name__ == "__main__":
    main()
