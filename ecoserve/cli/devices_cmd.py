"""``ecoserve devices``: what this box lets ecoserve control and measure, and why not.

Read-only: nothing is written, so it is safe to run as any user, and it is the first
thing to run on a new board (its "writable: no — permission: ..." lines name the fix).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "--sysfs-root",
        default="/",
        metavar="DIR",
        help="where sysfs is mounted from (default /; a fake tree in tests)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    report, specs = probe(args.sysfs_root)
    if args.json:
        data = report.to_dict()
        for meter, spec in zip(data["meters"], specs):
            meter["spec"] = spec
        print(json.dumps(data, indent=2))
    else:
        print(report.render_text())
        print()
        print(f"--meter auto uses: {auto_meter(report.meters)}")
        usable = [s for s, m in zip(specs, report.meters) if s and m.readable]
        if usable:
            print(f"--meter choices: {', '.join(dict.fromkeys(usable))}")
    return 0


def auto_meter(meters: list[Any]) -> str:
    """What ``--meter auto`` would open, in the order ``open_meter`` tries: INA3221, RAPL,
    NVML GPU 0, else the estimate."""
    for kind in ("ina3221", "rapl"):
        chosen = [m for m in meters if m.kind == kind and m.readable and "default" in m.reason]
        if chosen:
            return f"{' + '.join(m.name for m in chosen)} ({kind}, measured)"
    gpu = next((m for m in meters if m.kind == "nvml" and m.readable), None)
    if gpu is not None:
        return f"{gpu.name} (nvml, measured)"
    return "an ESTIMATE from CPU utilisation (no power sensor readable)"


def probe(sysfs_root: str) -> tuple[Any, list[str]]:
    """The discovery report with every meter back-end probed, and each meter's spec.

    ``probe_meters`` reports dicts carrying the ``--meter`` spec that opens each sensor;
    ``MeterInfo`` has no such field, so the specs come back alongside, in the same order.
    """
    from devices.discovery import MeterInfo, discover
    from devices.meters import probe_meters
    from devices.sysfs import SysfsRoot

    specs: list[str] = []

    def meter_probe(root: SysfsRoot) -> list[MeterInfo]:
        entries = probe_meters(root.root)
        specs.extend(str(e.get("spec", "")) for e in entries)
        return [
            MeterInfo(
                name=str(e["name"]),
                kind=str(e["kind"]),
                path=str(e["path"]),
                readable=bool(e["readable"]),
                reason=str(e["reason"]),
                estimated=bool(e["estimated"]),
            )
            for e in entries
        ]

    report = discover(SysfsRoot(sysfs_root), meter_probes=[meter_probe])
    # A failed probe adds an entry of its own without a spec: keep the lists aligned.
    specs.extend("" for _ in range(len(report.meters) - len(specs)))
    return report, specs
