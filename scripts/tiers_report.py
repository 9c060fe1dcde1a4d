"""Tables for docs/tiers.md: split point against bandwidth, cascade against threshold.

Everything is seeded and runs on one CPU thread; the only thing that varies between runs is
the measured stage times (medians, on a possibly shared machine). The device tier is this
CPU; the next tier is emulated as the same stages ``--speedup`` times faster. Device power
figures are assumptions stated in the output, not measurements.

    python scripts/tiers_report.py > /tmp/tiers_tables.md     # about 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import platform
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ecoserve.core.knobs import DEFAULT_THRESHOLDS
from ecoserve.core.link import Link
from ecoserve.core.tiers import CascadeCosts, CascadePolicy, DevicePower, StageProfile
from ecoserve.models.cascade import confidence
from ecoserve.models.digits import count_correct, load_digits_model, load_digits_split
from ecoserve.models.stages import median_call_s, profile_stages, sequential_from_fx
from ecoserve.models.tensor_codec import decode_tensor, encode_tensor
from ecoserve.server.tier_node import CascadeRunner
from tuners.cascade_threshold import ThresholdChooser
from tuners.neurosurgeon import Goal, Objective, SplitPlanner

BANDWIDTHS_MBIT = (0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000)
POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
NPY_HEADER = 128


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- a ResNet-18-shaped network, to show splits where an intermediate tensor is small -------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18Shape(nn.Module):
    """ResNet-18's layer shapes (random weights: only times and sizes matter here)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.layers = nn.Sequential(
            *[nn.Sequential(BasicBlock(a, b, s), BasicBlock(b, b, 1)) for a, b, s in widths]
        )
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


# -- tables ----------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    return f"{n / 1000:.1f} kB" if n >= 1000 else f"{n:.0f} B"


def stage_table(dev: StageProfile, srv: StageProfile) -> list[str]:
    out = [
        "| cut k | stage k (runs after the cut) | device µs | next tier µs | tensor at cut k |",
        "|---|---|---:|---:|---|",
    ]
    for k in range(dev.n_stages + 1):
        name = dev.names[k] if k < dev.n_stages else "(output)"
        d = f"{dev.times_s[k] * 1e6:.1f}" if k < dev.n_stages else ""
        s = f"{srv.times_s[k] * 1e6:.1f}" if k < dev.n_stages else ""
        shape = "x".join(str(v) for v in dev.cut_shapes[k])
        out.append(f"| {k} | {name} | {d} | {s} | {shape} = {fmt_bytes(dev.cut_bytes[k])} |")
    return out


@dataclass(frozen=True)
class Column:
    """One column of a split table: a goal on a link shape, optionally another next tier."""

    label: str
    goal: Goal
    rtt_s: float
    fp16: bool = False
    speedup: float | None = None  # None: the report's default next tier


def split_table(dev: StageProfile, default_speedup: float, columns: list[Column]) -> list[str]:
    """Per bandwidth and column: the best split j, its figure, and the bytes it sends."""
    planners = [
        SplitPlanner(
            dev,
            dev.scaled(c.speedup or default_speedup, tier="next"),
            POWER,
            Objective(c.goal),
            fp16=c.fp16,
            overhead_bytes=NPY_HEADER,
        )
        for c in columns
    ]
    out = [
        "| Mbit/s | " + " | ".join(c.label for c in columns) + " |",
        "|---:|" + "---|" * len(columns),
    ]
    for mbit in BANDWIDTHS_MBIT:
        cells = []
        for col, planner in zip(columns, planners, strict=True):
            link = Link(mbit * 1e6, col.rtt_s)
            j = planner.best_split(link)
            row = planner.table(link)[j]
            figure = (
                f"{row.latency_s * 1e3:.3f} ms"
                if col.goal == "latency"
                else f"{row.energy_j * 1e3:.3f} mJ"
            )
            cells.append(f"{j} · {figure} · {fmt_bytes(row.sent_bytes)}")
        out.append(f"| {mbit:g} | " + " | ".join(cells) + " |")
    local = planners[0].table(Link(1e6, 0))[dev.n_stages]
    out += [
        "",
        f"Cell: best split j · its figure · bytes sent. All local (j = {dev.n_stages}): "
        f"{local.latency_s * 1e3:.3f} ms, {local.energy_j * 1e3:.3f} mJ on the device.",
    ]
    return out


def cascade_table(
    small_scores: torch.Tensor,
    small_pred: torch.Tensor,
    big_pred: torch.Tensor,
    labels: torch.Tensor,
    costs: CascadeCosts,
    links: list[tuple[str, Link]],
) -> list[str]:
    """Measured forwarding, accuracy; expected mean latency on each link vs non-split."""
    non_split = [
        link.exchange_time(costs.input_bytes, costs.output_bytes) + costs.big_s for _, link in links
    ]
    n = len(labels)
    out = [
        "| threshold | forwarded | uplink saved | accuracy | "
        + " | ".join(f"latency, {name} (vs non-split)" for name, _ in links)
        + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(links),
    ]
    for t in DEFAULT_THRESHOLDS:
        fwd = torch.zeros(n, dtype=torch.bool) if t <= 0 else (small_scores < t) | (t >= 1.0)
        answer = torch.where(fwd, big_pred, small_pred)
        f = float(fwd.float().mean())
        acc = float((answer == labels).float().mean())
        cells = [
            f"{(costs.small_s + f * ns) * 1e3:.3f} ms ({(costs.small_s + f * ns) / ns:.2f}x)"
            for ns in non_split
        ]
        out.append(
            f"| {t:g} | {f * 100:.1f}% | {(1 - f) * 100:.1f}% | {acc * 100:.2f}% | "
            + " | ".join(cells)
            + " |"
        )
    big_acc = float((big_pred == labels).float().mean())
    out.append(
        f"| non-split (large only) | 100% | 0% | {big_acc * 100:.2f}% | "
        + " | ".join(f"{ns * 1e3:.3f} ms (1.00x)" for ns in non_split)
        + " |"
    )
    return out


def chooser_table(
    small: nn.Module,
    large: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    costs: CascadeCosts,
    baseline: Link,
    rate: float,
    floor: float,
    big_accuracy: float,
    rtt_s: float,
    error_weight: float,
) -> list[str]:
    """Run the real CascadeRunner + ThresholdChooser over a seeded stream per bandwidth."""
    order = list(range(len(y))) * 4
    random.Random(0).shuffle(order)
    out = [
        "| Mbit/s | chosen threshold (end) | forwarded (stream) | accuracy (stream) | thresholds used |",
        "|---:|---:|---:|---:|---|",
    ]

    async def forward(payload: bytes) -> bytes:
        with torch.inference_mode():
            return encode_tensor(large(decode_tensor(payload, dtype=torch.float32)))

    for mbit in BANDWIDTHS_MBIT:
        link = Link(mbit * 1e6, rtt_s)
        chooser = ThresholdChooser(
            costs,
            POWER,
            accuracy_floor=floor,
            big_accuracy=big_accuracy,
            error_weight=error_weight,
            baseline_link=baseline,
            seed=0,
        )
        policy = CascadePolicy(1.0, explore=chooser.explore, seed=chooser.seed)
        runner = CascadeRunner(small, policy, forward, chooser=chooser, in_thread=False)
        used: list[float] = []
        correct = forwarded = 0

        async def stream(
            runner: CascadeRunner = runner,
            chooser: ThresholdChooser = chooser,
            link: Link = link,
            used: list[float] = used,
        ) -> tuple[int, int]:
            ok = fw = 0
            for i, idx in enumerate(order):
                if i % 50 == 0:
                    runner.policy.threshold = chooser.choose(link, rate)
                    if not used or used[-1] != runner.policy.threshold:
                        used.append(runner.policy.threshold)
                res = await runner.run(x[idx : idx + 1])
                ok += int(res.preds[0] == int(y[idx]))
                fw += int(res.forwarded[0])
            return ok, fw

        correct, forwarded = asyncio.run(stream())
        n = len(order)
        path = " → ".join(f"{t:g}" for t in used[:8]) + (" …" if len(used) > 8 else "")
        out.append(
            f"| {mbit:g} | {chooser.choose(link, rate):g} | {forwarded / n * 100:.1f}% | "
            f"{correct / n * 100:.2f}% | {path} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=4.0, help="next tier vs this CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)

    split = load_digits_split()
    small, large = load_digits_model("small"), load_digits_model("large")
    x1 = split.x_test[:1]
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {cpu_name()}, torch {torch.__version__}, "
        f"1 thread, batch 1. Next tier = these stage times / {args.speedup:g}. Device power "
        f"(assumed, Jetson-class): busy {POWER.busy_w} W, radio {POWER.tx_w} W, waiting "
        f"{POWER.idle_w} W. Transfers priced with the {NPY_HEADER}-byte .npy header.",
        "",
        "### Models",
        "",
        "| model | parameters | test accuracy (450 held out) | batch-1 latency here |",
        "|---|---:|---:|---:|",
    ]
    for name, model in (("small", small), ("large", large)):
        c = count_correct(model, split.x_test, split.y_test)
        params = sum(p.numel() for p in model.parameters())
        lines.append(
            f"| {name} | {params} | {c / len(split.y_test) * 100:.2f}% ({c}/{len(split.y_test)}) "
            f"| {median_call_s(functools.partial(model, x1)) * 1e6:.0f} µs |"
        )

    dev = profile_stages(large, x1, repeats=200, warmup=20, tier="device")
    srv = dev.scaled(args.speedup, tier="next")
    lines += ["", "### Digits large: stages", "", *stage_table(dev, srv)]
    lines += ["", "### Digits large: best split against bandwidth", ""]
    lines += split_table(
        dev,
        args.speedup,
        [
            Column("latency, RTT 0", "latency", 0.0),
            Column("latency, RTT 1 ms", "latency", 0.001),
            Column("latency, RTT 0, fp16", "latency", 0.0, fp16=True),
            Column("device energy, RTT 0", "energy", 0.0),
        ],
    )

    resnet = ResNet18Shape().eval()
    xr = torch.rand(1, 3, 224, 224)
    rseq = sequential_from_fx(resnet, xr)
    rdev = profile_stages(rseq, xr, repeats=7, warmup=2)
    lines += [
        "",
        "### ResNet-18 shape (fx-sliced, random weights): best split against bandwidth",
        "",
    ]
    lines.append(
        "Cut k names: "
        + ", ".join(
            f"{k}={'input' if k == 0 else rdev.names[k - 1]}" for k in range(rdev.n_stages + 1)
        )
        + f"; all-local compute {rdev.total_s * 1e3:.1f} ms here."
    )
    lines.append("")
    lines += split_table(
        rdev,
        args.speedup,
        [
            Column("latency, RTT 5 ms", "latency", 0.005),
            Column("latency, RTT 5 ms, fp16", "latency", 0.005, fp16=True),
            Column("device energy, RTT 5 ms", "energy", 0.005),
            Column("latency, RTT 5 ms, next tier 20x", "latency", 0.005, speedup=20.0),
        ],
    )

    with torch.inference_mode():
        s_scores, s_pred = confidence(small(split.x_test))
        b_pred = large(split.x_test).argmax(dim=1)
    costs = CascadeCosts(
        small_s=median_call_s(lambda: small(x1)),
        big_s=dev.total_s / args.speedup,
        input_bytes=len(encode_tensor(x1)),
        output_bytes=len(encode_tensor(torch.zeros(1, 10))),
    )
    link = Link(10e6, 0.005)
    lines += [
        "",
        f"### Cascade against threshold ({costs.input_bytes} B up, {costs.output_bytes} B down "
        "per forwarded input; accuracy and forwarding measured on the 450 test images)",
        "",
        *cascade_table(
            s_scores,
            s_pred,
            b_pred,
            split.y_test,
            costs,
            [("10 Mbit/s RTT 5 ms", link), ("1000 Mbit/s RTT 0", Link(1e9, 0.0))],
        ),
    ]
    big_acc = count_correct(large, split.x_test, split.y_test) / len(split.y_test)
    rate = 300.0
    for floor, weight in ((0.97, 10.0), (0.98, 0.0)):
        lines += [
            "",
            f"### Online threshold against bandwidth (accuracy floor {floor:.2f}, error weight "
            f"{weight:g}, {rate:g} requests/s, RTT 1 ms, baseline link 10 Mbit/s / 5 ms)",
            "",
            *chooser_table(
                small,
                large,
                split.x_test,
                split.y_test,
                costs,
                link,
                rate,
                floor,
                big_acc,
                0.001,
                weight,
            ),
        ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
