"""The serving loop survives the hardware: faults injected into a daemon's fake board mid-serve.

Each test starts ``ecoserve serve --device sysfs`` on a fake Xavier NX tree, lets it tune,
breaks a file the way a board does (a file that vanishes, one that becomes a directory, a
sensor that disappears), and checks that requests keep getting 200, that the fault is
reported once (log line, ``/v1/status``, ``ecoserve_device_faults_total``), and that the
tuner stops moving what cannot be applied.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server_fixtures import Daemon

from devices.testing import xavier_nx_tree

GPU = "sys/devices/17000000.gv11b/devfreq/17000000.gv11b"
CPU0 = "sys/devices/system/cpu/cpufreq/policy0"
HWMON = "sys/bus/i2c/drivers/ina3221/7-0040/hwmon/hwmon3"
BODY = {"inputs": [[[[0.0] * 32] * 32] * 3]}


@pytest.fixture()
def board(tmp_path: Path) -> Path:
    return xavier_nx_tree(tmp_path / "tree")


def serve(tree: Path, tmp_path: Path, *extra: str) -> Daemon:
    args = ("--device", "sysfs", "--sysfs-root", str(tree), "--restore-dir", str(tmp_path / "st"))
    args += ("--window-requests", "8", "--warmup-requests", "2", "--window-seconds", "1")
    return Daemon(*args, *extra).start()


@pytest.fixture()
def daemon_on(board: Path, tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    d = serve(board, tmp_path, "--meter", "estimate")
    try:
        yield d, board
    finally:
        d.stop()


def drive(url: str, seconds: float) -> list[int]:
    codes = []
    end = time.monotonic() + seconds
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < end:
            codes.append(http.post(url + "/v1/infer", json=BODY).status_code)
    return codes


def status(url: str) -> dict:
    return httpx.get(url + "/v1/status", params={"windows": 0}, timeout=5).json()


def fault_count(url: str, knob: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("ecoserve_device_faults_total{") and f'knob="{knob}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_vanished_gpu_file_freezes_the_gpu_knob_and_serving_goes_on(daemon_on) -> None:
    d, tree = daemon_on
    assert all(c == 200 for c in drive(d.url, 1.0))
    (tree / GPU / "max_freq").unlink()  # the node's file is gone (a driver reload, a bad overlay)
    codes = drive(d.url, 4.0)
    assert codes and all(c == 200 for c in codes), set(codes)
    s = status(d.url)
    assert "gpu_freq_hz" in s["frozen"] and "ENOENT" in s["frozen"]["gpu_freq_hz"]
    assert "gpu_freq_hz" not in s["config"] and "gpu_freq_hz" not in s["knobs"]
    assert "cpu_freq_hz" in s["config"]  # the other knobs are still tuned
    assert s["loop_alive"] and httpx.get(d.url + "/readyz").status_code == 200
    assert fault_count(d.url, "gpu_freq_hz") == 1
    assert d.output.count("knob gpu_freq_hz frozen") == 1


def test_a_setspeed_that_became_a_directory_freezes_the_cpu_knob(daemon_on) -> None:
    d, tree = daemon_on
    assert all(c == 200 for c in drive(d.url, 1.0))
    for policy in ("policy0", "policy2", "policy4"):
        target = tree / "sys/devices/system/cpu/cpufreq" / policy / "scaling_setspeed"
        target.unlink()
        target.mkdir()
    codes = drive(d.url, 4.0)
    assert codes and all(c == 200 for c in codes), set(codes)
    s = status(d.url)
    assert "cpu_freq_hz" in s["frozen"] and "EISDIR" in s["frozen"]["cpu_freq_hz"]
    assert "cpu_freq_hz" not in s["config"]
    assert fault_count(d.url, "cpu_freq_hz") == 1
    assert httpx.get(d.url + "/healthz").status_code == 200


def test_a_vanished_power_sensor_is_reported_and_tuning_holds(board: Path, tmp_path: Path) -> None:
    d = serve(board, tmp_path, "--meter", "ina3221")
    try:
        assert all(c == 200 for c in drive(d.url, 1.5))
        shutil.rmtree(board / HWMON)
        codes = drive(d.url, 3.0)
        assert codes and all(c == 200 for c in codes), set(codes)
        s = status(d.url)
        assert s["meter_fault"] and "no good power reading" in s["meter_fault"]
        assert s["tuner_phase"] == "pinned"  # holds rather than tunes on invented joules
        held = s["config"]
        drive(d.url, 2.0)
        assert status(d.url)["config"] == held
        assert fault_count(d.url, "meter") == 1
        assert "power meter failed" in d.output
    finally:
        d.stop()
