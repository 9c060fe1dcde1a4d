"""Fit the device twin's coefficients to the measured Jetson data and report the fit error.

The library half of ``scripts/fit_twin.py`` (the command only calls :func:`main`). Usage,
from the repository root::

    python scripts/fit_twin.py                   # fit, write twins/data/, print the tables
    python scripts/fit_twin.py --check           # fit and compare with what is committed
    python scripts/fit_twin.py --data ../shared/data

Inputs (``--data``, default ``../shared/data`` next to the repository):

- ``jetson/jetson_triton_mobilenet_joined.csv``: MobileNet under Triton at concurrency 1 on a
  Jetson AGX Xavier and a Jetson Nano (emwjacobson/JetsonEfficiencyTesting, commit
  2b4408066d65e2fd39921097f0a15ffc27d08040); one row per measurement window;
- ``jetson/raw/{agx,nano}/*_power.csv`` and ``*_timings.csv``: the power logs, read only for
  the board's idle power (the samples before a session's first window);
- ``jetson/jetson_gemm_xgboost_gpufreq_summary.csv``: GEMM power at every GPU step, used as
  a cross-check of the voltage curve fitted on MobileNet;
- ``jetson/pagoda_orin_agx_maxn_notebook_excerpt.csv``: MobileNet time and power per
  minibatch on an Orin AGX at MAXN (dream-lab/pagoda, Apache-2.0).

Outputs: ``twins/data/twin_coefficients.json`` (coefficients, sources, assumptions, fit
errors) and ``twins/data/jetson_mobilenet_settings.csv`` (per-setting means: derived
figures, which the source's terms allow committing with attribution; the raw files are not
copied). The model itself is ``twins.fitted``; this module only finds its numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from devices.boards import AGX_XAVIER, NANO
from twins.fitted import TwinParams, active_power, relative_voltage, time_parts

OUT_DIR = Path(__file__).resolve().parent / "data"
COEFFICIENTS = "twin_coefficients.json"
SETTINGS = "jetson_mobilenet_settings.csv"

JETSON_SOURCE = {
    "name": "emwjacobson/JetsonEfficiencyTesting",
    "path": "triton/data/",
    "commit": "2b4408066d65e2fd39921097f0a15ffc27d08040",
    "licence": "no licence file: derived figures (coefficients, per-setting means) are "
    "committed with attribution, the raw files are not",
    "what": "MobileNet served by NVIDIA Triton (perf_analyzer, concurrency 1), CPU pinned at "
    "its maximum, GPU devfreq min=max per step; whole-board AC power at about 1 Hz",
}
PAGODA_SOURCE = {
    "name": "dream-lab/pagoda",
    "commit": "34dbe0f4b2189d2f774d4f352ba6b44761473ace",
    "licence": "Apache-2.0",
    "what": "Jetson Orin AGX at MAXN (CPU 2201.6 MHz, GPU 1300.5 MHz, EMC 3199 MHz): MobileNet "
    "time and power per minibatch, batch 1, 4, 16, 32, 64",
}

#: Stated assumptions, not measurements: nothing public sweeps the CPU clock for inference.
CPU_SHARE = 0.5  # share of the non-GPU active power that is CPU dynamic power at f_cpu max
CPU_V_MIN = 0.6  # CPU voltage at the lowest clock relative to the highest (Carmel/A57/A78 class)
NX_CORES, AGX_CORES = 384, 512  # Volta CUDA cores of the Xavier NX and the AGX Xavier

BOARDS = {"AGX": AGX_XAVIER, "NANO": NANO}
HOST_COLUMNS = (
    "client_send_us",
    "net_server_sendrecv_us",
    "server_queue_us",
    "server_compute_input_us",
    "server_compute_output_us",
    "client_recv_us",
)


@dataclass(frozen=True)
class Points:
    """Measurements of one board: one entry per window (or per setting)."""

    batch: np.ndarray
    cpu_hz: np.ndarray
    gpu_hz: np.ndarray
    time_s: np.ndarray  # seconds per batch: batch / (inferences per second)
    host_s: np.ndarray  # host-side part of it (NaN where not measured)
    power_w: np.ndarray
    energy_j: np.ndarray  # joules per inference as measured (power / throughput)


def sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits, so the JSON stays readable.

    Values a bounded fit pushed against zero (1e-9 and the like) are written as 0: no
    coefficient here (seconds, watts, batch sizes) means anything below a millionth.
    """
    return 0.0 if abs(x) < 1e-6 else float(f"{x:.{digits}g}")


def read_windows(data: Path) -> dict[str, Points]:
    """Triton measurement windows per board (TensorRT single runs are left out).

    The ``trt_single_run`` rows are a separate TensorRT/DLA engine run once per setting (one
    of them has no GPU frequency recorded): not the Triton GPU path the twin models.
    """
    path = data / "jetson" / "jetson_triton_mobilenet_joined.csv"
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["sweep"] != "trt_single_run"]
    out: dict[str, Points] = {}
    for device, profile in BOARDS.items():
        sel = [r for r in rows if r["device"] == device]

        def col(name: str, sel: list[dict[str, str]] = sel) -> np.ndarray:
            return np.array([float(r[name]) for r in sel])

        batch = col("batch_size")
        out[profile.name] = Points(
            batch=batch,
            cpu_hz=np.full(batch.size, float(profile.cpu_freqs_hz[-1])),
            gpu_hz=col("gpu_freq_hz"),
            time_s=batch / col("inferences_per_s"),
            host_s=sum((col(c) for c in HOST_COLUMNS), np.zeros(batch.size)) * 1e-6,
            power_w=col("avg_wall_power_w"),
            energy_j=col("energy_per_inference_j"),
        )
    return out


def read_orin(data: Path) -> Points:
    """The pagoda MobileNet rows (one figure per batch size, all at MAXN)."""
    path = data / "jetson" / "pagoda_orin_agx_maxn_notebook_excerpt.csv"
    with path.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["model"] == "mobnet"]
    batch = np.array([float(r["batch_size"]) for r in rows])
    time_s = np.array([float(r["observed_time_ms"]) for r in rows]) * 1e-3
    power = np.array([float(r["observed_power_w"]) for r in rows])
    return Points(
        batch=batch,
        cpu_hz=np.array([float(r["cpu_khz"]) * 1e3 for r in rows]),
        gpu_hz=np.array([float(r["gpu_hz"]) for r in rows]),
        time_s=time_s,
        host_s=np.full(batch.size, np.nan),
        power_w=power,
        energy_j=power * time_s / batch,
    )


def idle_power(data: Path, folder: str) -> tuple[float, list[float]]:
    """Idle watts: the lowest per-session median of the samples before its first window.

    After a run the wall power decays for tens of seconds (fans, temperature), so gaps
    between windows overstate idle; a session's lead-in, taken at rest, does not. The lowest
    session is used because some sessions started soon after an earlier one.
    """
    medians = []
    for power_file in sorted((data / "jetson" / "raw" / folder).glob("*_power.csv")):
        timings = power_file.with_name(power_file.name.replace("_power", "_timings"))
        with timings.open(newline="") as handle:
            starts = [float(r[0]) for r in list(csv.reader(handle))[1:] if r]
        with power_file.open(newline="") as handle:
            samples = [(float(r[0]), float(r[1])) for r in csv.reader(handle) if len(r) == 2]
        before = [w for t, w in samples if t < min(starts)]
        if len(before) >= 3:
            medians.append(float(np.median(before)))
    return min(medians), medians


def fit_measured(points: Points, idle_w: float, cpu_ref: float, gpu_ref: float) -> TwinParams:
    """Coefficients of a board measured over GPU frequency x batch (AGX Xavier, Nano)."""
    b, t, host = points.batch, points.time_s, points.host_s
    # Host side: affine in the batch, fitted to Triton's own breakdown of each request.
    h = least_squares(
        lambda p: (p[0] + p[1] * b - host) / host, [1e-3, 1e-4], bounds=([0, 0], [np.inf, np.inf])
    ).x
    base = TwinParams(
        cpu_ref_hz=cpu_ref,
        gpu_ref_hz=gpu_ref,
        host_s0=sig(h[0]),
        host_s1=sig(h[1]),
        fixed_s0=0.0,
        fixed_s1=0.0,
        gpu_s0=0.0,
        gpu_s1=0.0,
        batch_exponent=1.0,
        overlap=1.0,
        idle_w=sig(idle_w),
        soc_w=0.0,
        cpu_w=0.0,
        gpu_w=0.0,
        occupancy_half_batch=0.0,
        gpu_v_min=1.0,
        cpu_v_min=CPU_V_MIN,
    )

    def with_time(p: Sequence[float]) -> TwinParams:
        return replace(
            base, fixed_s0=p[0], fixed_s1=p[1], gpu_s0=p[2], gpu_s1=p[3], batch_exponent=p[4]
        )

    def time_residual(p: Sequence[float]) -> np.ndarray:
        return time_parts(with_time(p), b, points.cpu_hz, points.gpu_hz)[2] / t - 1.0

    tp = least_squares(
        time_residual, [1e-3, 1e-4, 1e-3, 1e-3, 1.0], bounds=([0, 0, 0, 0, 0.5], [1, 1, 1, 1, 1.5])
    ).x
    timed = with_time([sig(v) for v in tp])

    def with_power(p: Sequence[float]) -> TwinParams:
        return replace(
            timed,
            soc_w=p[0] * (1 - CPU_SHARE),
            cpu_w=p[0] * CPU_SHARE,
            gpu_w=p[1],
            occupancy_half_batch=p[2],
            gpu_v_min=p[3],
        )

    def power_residual(p: Sequence[float]) -> np.ndarray:
        model = active_power(with_power(p), b, points.cpu_hz, points.gpu_hz)
        return model / points.power_w - 1.0

    pp = least_squares(
        power_residual, [1.0, 10.0, 1.0, 0.5], bounds=([0, 0, 0, 0.05], [np.inf, np.inf, 64, 1])
    ).x
    return with_power([sig(v) for v in pp])


def fit_orin(points: Points, agx: TwinParams) -> tuple[TwinParams, float]:
    """Orin coefficients: batch response fitted at MAXN, frequency response from the AGX.

    Five figures at one clock setting cannot separate CPU, GPU-clocked and unclocked time,
    so: host work is one per-batch constant (kernel launches: PyTorch launches the same
    kernels whatever the batch), host and GPU overlap with a fitted exponent (launches are
    asynchronous: batch 1 and 4 take the same time), and the GPU part is split into clocked
    and unclocked shares as in the AGX fit at its top clocks (batch 16). Idle vs active
    non-GPU power is split in the AGX's proportion; voltage curves are the AGX's.
    """
    b = points.batch
    cpu_ref, gpu_ref = float(points.cpu_hz[0]), float(points.gpu_hz[0])
    _, agx_device, _ = time_parts(agx, 16, agx.cpu_ref_hz, agx.gpu_ref_hz)
    unclocked = agx.fixed_s0 + agx.fixed_s1 * 16
    gpu_share = float((agx_device - unclocked) / agx_device)

    def time_model(p: Sequence[float]) -> TwinParams:
        return replace(
            agx,
            cpu_ref_hz=cpu_ref,
            gpu_ref_hz=gpu_ref,
            host_s0=p[0],
            host_s1=0.0,
            fixed_s0=sig(p[1] * (1 - gpu_share)),
            fixed_s1=sig(p[2] * (1 - gpu_share)),
            gpu_s0=sig(p[1] * gpu_share),
            gpu_s1=sig(p[2] * gpu_share),
            batch_exponent=1.0,
            overlap=p[3],
        )

    tp = least_squares(
        lambda p: time_parts(time_model(p), b, cpu_ref, gpu_ref)[2] / points.time_s - 1.0,
        [0.015, 0.001, 0.0015, 4.0],
        bounds=([0, 0, 0, 1], [1, 1, 1, 50]),
    ).x
    timed = time_model([sig(v) for v in tp])
    agx_static = agx.soc_w + agx.cpu_w
    idle_share = agx.idle_w / (agx.idle_w + agx_static)

    def power_model(p: Sequence[float]) -> TwinParams:
        static = p[0] * (1 - idle_share)
        return replace(
            timed,
            idle_w=p[0] * idle_share,
            soc_w=static * (1 - CPU_SHARE),
            cpu_w=static * CPU_SHARE,
            gpu_w=p[1],
            occupancy_half_batch=p[2],
        )

    pp = least_squares(
        lambda p: active_power(power_model(p), b, cpu_ref, gpu_ref) / points.power_w - 1.0,
        [15.0, 20.0, 4.0],
        bounds=([0, 0, 0], [np.inf, np.inf, 256]),
    ).x
    rounded = [sig(v) for v in pp]
    params = power_model(rounded)
    params = replace(
        params,
        idle_w=sig(params.idle_w),
        soc_w=sig(params.soc_w),
        cpu_w=sig(params.cpu_w),
    )
    return params, gpu_share


def derive_nx(agx: TwinParams) -> TwinParams:
    """The Xavier NX from the AGX Xavier fit: a derivation, not a measurement.

    Same Volta GPU and Carmel CPU, fewer GPU cores (384 vs 512): the GPU-clocked time grows
    by 512/384 at a given clock and the NX's clocks stop lower (1109 vs 1377 MHz GPU, 1907 vs
    2266 MHz CPU), which the model's absolute reference clocks carry (the same silicon's
    voltage-frequency curve). GPU dynamic power and the batch at which the GPU fills scale
    with the core count. Unclocked GPU time, idle and non-GPU power are kept as the AGX's:
    the NX's narrower memory (and smaller board) would change them, and no data says by
    how much.
    """
    scale = AGX_CORES / NX_CORES
    return replace(
        agx,
        gpu_s0=sig(agx.gpu_s0 * scale),
        gpu_s1=sig(agx.gpu_s1 * scale),
        gpu_w=sig(agx.gpu_w / scale),
        occupancy_half_batch=sig(agx.occupancy_half_batch / scale),
    )


def gemm_voltage_check(data: Path) -> dict[str, float]:
    """``gpu_v_min`` fitted on GEMM (N = 2048) power vs GPU clock, per board.

    GEMM keeps the GPU saturated, so its power-vs-clock curve isolates f*V^2; agreement with
    the MobileNet fit says the voltage curve is the board's, not an artefact of the workload.
    """
    path = data / "jetson" / "jetson_gemm_xgboost_gpufreq_summary.csv"
    with path.open(newline="") as handle:
        rows = [
            r for r in csv.DictReader(handle) if r["workload"] == "GEMM" and r["matrix_n"] == "2048"
        ]
    out = {}
    for device, board in (("AGX", "agx-xavier"), ("Nano", "nano")):
        sel = [r for r in rows if r["device"] == device]
        f = np.array([float(r["gpu_freq_hz"]) for r in sel])
        watts = np.array([float(r["avg_wall_power_w"]) for r in sel])
        r = f / f.max()
        fit = least_squares(
            lambda p, r=r, watts=watts: (
                (p[0] + p[1] * r * relative_voltage(r, p[2]) ** 2) / watts - 1
            ),
            [5.0, 20.0, 0.5],
            bounds=([0, 0, 0.05], [np.inf, np.inf, 1]),
        ).x
        out[board] = sig(float(fit[2]), 3)
    return out


def errors(params: TwinParams, points: Points) -> dict[str, float]:
    """MAPE (%) of batch time, power and energy per inference, and the worst energy error."""
    t = time_parts(params, points.batch, points.cpu_hz, points.gpu_hz)[2]
    p = active_power(params, points.batch, points.cpu_hz, points.gpu_hz)
    e = p * t / points.batch
    rel_t, rel_p, rel_e = t / points.time_s - 1, p / points.power_w - 1, e / points.energy_j - 1
    return {
        "points": int(points.batch.size),
        "batch_time_mape_pct": sig(100 * float(np.mean(np.abs(rel_t))), 3),
        "power_mape_pct": sig(100 * float(np.mean(np.abs(rel_p))), 3),
        "energy_mape_pct": sig(100 * float(np.mean(np.abs(rel_e))), 3),
        "energy_max_err_pct": sig(100 * float(np.max(np.abs(rel_e))), 3),
    }


def residual_noise(params: TwinParams, points: Points) -> dict[str, float]:
    """Std-dev of the relative residuals: the default measurement noise of the twin."""
    t = time_parts(params, points.batch, points.cpu_hz, points.gpu_hz)[2]
    p = active_power(params, points.batch, points.cpu_hz, points.gpu_hz)
    return {
        "time_rel_std": sig(float(np.std(t / points.time_s - 1)), 3),
        "power_rel_std": sig(float(np.std(p / points.power_w - 1)), 3),
    }


def setting_means(board: str, source: str, points: Points) -> list[dict[str, Any]]:
    """Per-setting means of the windows (a few settings were measured by two sweeps)."""
    groups: dict[tuple[float, float, float], list[int]] = defaultdict(list)
    for i in range(points.batch.size):
        groups[(points.cpu_hz[i], points.gpu_hz[i], points.batch[i])].append(i)
    rows = []
    for (cpu, gpu, batch), idx in sorted(groups.items()):
        rows.append(
            {
                "board": board,
                "source": source,
                "cpu_freq_hz": int(cpu),
                "gpu_freq_hz": int(gpu),
                "batch_size": int(batch),
                "n_windows": len(idx),
                "batch_time_s": sig(float(np.mean(points.time_s[idx]))),
                "power_w": sig(float(np.mean(points.power_w[idx]))),
                "energy_per_item_j": sig(float(np.mean(points.energy_j[idx]))),
            }
        )
    return rows


def settings_points(rows: list[dict[str, Any]]) -> Points:
    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in rows])

    return Points(
        batch=col("batch_size"),
        cpu_hz=col("cpu_freq_hz"),
        gpu_hz=col("gpu_freq_hz"),
        time_s=col("batch_time_s"),
        host_s=np.full(len(rows), np.nan),
        power_w=col("power_w"),
        energy_j=col("energy_per_item_j"),
    )


SETTINGS_COLUMNS = (
    "board",
    "source",
    "cpu_freq_hz",
    "gpu_freq_hz",
    "batch_size",
    "n_windows",
    "batch_time_s",
    "power_w",
    "energy_per_item_j",
)


def settings_csv(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Per-setting means of measured MobileNet inference on Jetson boards (derived figures).",
        "# agx-xavier, nano: emwjacobson/JetsonEfficiencyTesting triton/data/, commit",
        "#   2b4408066d65e2fd39921097f0a15ffc27d08040; Triton perf_analyzer, concurrency 1; the",
        "#   mean of the measurement windows at each setting; whole-board AC power.",
        "# orin: dream-lab/pagoda, commit 34dbe0f4b2189d2f774d4f352ba6b44761473ace, Apache-2.0;",
        "#   one figure per batch at MAXN (energy_per_item_j = power * time / batch).",
        "# batch_time_s: seconds per request of batch_size items. Written by scripts/fit_twin.py.",
        ",".join(SETTINGS_COLUMNS),
    ]
    for r in rows:
        lines.append(",".join(str(r[c]) for c in SETTINGS_COLUMNS))
    return "\n".join(lines) + "\n"


def fit_all(data: Path) -> tuple[dict[str, Any], str]:
    """Everything the script writes: the coefficients document and the settings CSV text."""
    windows = read_windows(data)
    idle = {
        board: idle_power(data, folder)
        for board, folder in (("agx-xavier", "agx"), ("nano", "nano"))
    }
    params: dict[str, TwinParams] = {}
    for board, profile in (("agx-xavier", AGX_XAVIER), ("nano", NANO)):
        params[board] = fit_measured(
            windows[board],
            idle[board][0],
            float(profile.cpu_freqs_hz[-1]),
            float(profile.gpu_freqs_hz[-1]),
        )
    orin_points = read_orin(data)
    params["orin"], orin_gpu_share = fit_orin(orin_points, params["agx-xavier"])
    params["xavier-nx"] = derive_nx(params["agx-xavier"])

    settings = (
        setting_means("agx-xavier", "JetsonEfficiencyTesting", windows["agx-xavier"])
        + setting_means("nano", "JetsonEfficiencyTesting", windows["nano"])
        + setting_means("orin", "pagoda", orin_points)
    )
    gemm = gemm_voltage_check(data)
    boards: dict[str, Any] = {}
    for board in ("agx-xavier", "nano"):
        per_setting = settings_points([r for r in settings if r["board"] == board])
        boards[board] = {
            "profile": board,
            "basis": "fitted: GPU frequency x batch measured; CPU frequency modelled",
            "max_batch": 32,
            "params": params[board].to_dict(),
            "noise": residual_noise(params[board], windows[board]),
            "fit_error": {
                "windows": errors(params[board], windows[board]),
                "settings": errors(params[board], per_setting),
            },
            "idle_power_w_per_session": [sig(m, 3) for m in idle[board][1]],
            "gemm_gpu_v_min": gemm[board],
        }
    orin_settings = settings_points([r for r in settings if r["board"] == "orin"])
    boards["orin"] = {
        "profile": "orin",
        "basis": "fitted at one clock setting: batch response fitted to 5 figures at MAXN; "
        "frequency response derived from the AGX Xavier fit; CPU frequency modelled",
        "max_batch": 64,
        "params": params["orin"].to_dict(),
        "noise": residual_noise(params["orin"], orin_points),
        "fit_error": {
            "windows": errors(params["orin"], orin_points),
            "settings": errors(params["orin"], orin_settings),
        },
        "derivation": {
            "gpu_clocked_share_from_agx": sig(orin_gpu_share, 3),
            "note": "host time is one per-batch constant (kernel launches) overlapping GPU "
            "work with a fitted exponent; the GPU time's clocked share, the idle share of "
            "non-GPU power and the voltage curves are taken from the AGX Xavier fit",
        },
    }
    boards["xavier-nx"] = {
        "profile": "xavier-nx",
        "basis": "derived: from the AGX Xavier fit (GPU cores 384 vs 512, lower top clocks), "
        "no measurement; CPU frequency modelled",
        "max_batch": 16,
        "params": params["xavier-nx"].to_dict(),
        "noise": boards["agx-xavier"]["noise"],
        "derivation": {"from": "agx-xavier", "gpu_core_ratio": f"{NX_CORES}/{AGX_CORES}"},
    }
    document = {
        "description": "Fitted device-twin coefficients (model: twins/fitted.py).",
        "generated_by": "python scripts/fit_twin.py",
        "workload": "MobileNet; AGX Xavier and Nano: NVIDIA Triton + TensorRT at concurrency 1",
        "sources": [JETSON_SOURCE, PAGODA_SOURCE],
        "assumptions": {
            "cpu_share_of_non_gpu_active_power": CPU_SHARE,
            "cpu_v_min": CPU_V_MIN,
            "cpu_frequency": "not measured: host-side time scales with f_ref/f, CPU power with "
            "f*V(f)^2; measurements were taken with the CPU at its maximum",
            "idle_power": "lowest per-session median of the power-log samples before the first "
            "measurement window (board at rest)",
        },
        "boards": {k: boards[k] for k in sorted(boards)},
    }
    return document, settings_csv(settings)


def markdown_tables(document: dict[str, Any]) -> str:
    """The fit-error tables as printed and as pasted into BENCHMARKS.md (device twin section)."""
    head = (
        "| board | basis | points | batch time MAPE | power MAPE | energy/inference MAPE "
        "| worst energy error |\n|---|---|---:|---:|---:|---:|---:|"
    )
    out = []
    for level, title in (("windows", "Every measured point"), ("settings", "Per-setting means")):
        lines = [f"{title}:", "", head]
        for board, entry in document["boards"].items():
            err = entry.get("fit_error", {}).get(level)
            basis = entry["basis"].split(":")[0]
            if err is None:
                lines.append(f"| {board} | {basis} | 0 | — | — | — | — |")
                continue
            lines.append(
                f"| {board} | {basis} | {err['points']} | {err['batch_time_mape_pct']:.1f}% "
                f"| {err['power_mape_pct']:.1f}% | {err['energy_mape_pct']:.1f}% "
                f"| {err['energy_max_err_pct']:.1f}% |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: Sequence[str] | None = None, default_data: Path | None = None) -> int:
    """The ``fit_twin`` command: fit, print the tables, write (or ``--check``) the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--data",
        type=Path,
        default=default_data,
        required=default_data is None,
        help="the shared data folder",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where to write the outputs")
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed outputs, write nothing"
    )
    args = parser.parse_args(argv)
    if not (args.data / "jetson").is_dir():
        print(f"no Jetson data under {args.data} (give --data)", file=sys.stderr)
        return 2
    document, settings = fit_all(args.data)
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    print(markdown_tables(document))
    targets: dict[str, str] = {COEFFICIENTS: text, SETTINGS: settings}
    if args.check:
        stale = [n for n, t in targets.items() if _read(args.out / n) != t]
        for name in stale:
            print(f"{args.out / name} differs from a fresh fit", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in targets.items():
        (args.out / name).write_text(content, encoding="utf-8")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None
