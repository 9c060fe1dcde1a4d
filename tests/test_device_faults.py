"""The serving loop survives the hardware: faults injected into a daemon's fake board mid-serve.

Each test starts ``ecoserve serve --device sysfs`` on a fake Xavier NX tree, lets it tune,
breaks a file the way a board does (a file that vanishes, one that becomes a directory, a
sensor that disappears), and checks that requests keep getting 200, that the fault is
reported once (log line, ``/v1/status``, ``ecoserve_device_faults_total``), and that the
tuner stops moving what cannot be applied.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from test_server_fixtures import Daemon

from devices.base import TransientDeviceError
from devices.discovery import open_sysfs_actuator
from devices.restore_record import IncompleteRestoreError, RestoreRecord, recover
from devices.sysfs import SysfsRoot
from devices.testing import FakeKernel, xavier_nx_tree
from ecoserve.server.file_budget import MIN_LINGERING, RESERVE, connection_budget, lingering_budget

REPO = Path(__file__).resolve().parents[1]
STATE_FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq")
STATE_FILES += ("governor", "min_freq", "max_freq")

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


def clock_files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted(root.rglob("*"))
        if p.name in STATE_FILES and p.is_file() and not p.is_symlink()
    }


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


# -- running out of file descriptors -------------------------------------------------------

CAPPED_GPU = (306000000, 956250000)


def fd_starved_model(batch: torch.Tensor) -> torch.Tensor:
    """Identity; when the file ``$ECOSERVE_TEST_STARVE`` appears, the process runs out of file
    descriptors for ``$ECOSERVE_TEST_STARVE_S`` seconds (every open answers EMFILE, as in a
    flood of idle connections), then has them again."""
    trigger = os.environ.get("ECOSERVE_TEST_STARVE", "")
    if trigger and os.path.exists(trigger):
        os.unlink(trigger)
        seconds = float(os.environ.get("ECOSERVE_TEST_STARVE_S", "3"))
        threading.Thread(target=_starve, args=(seconds,), daemon=True).start()
    return batch.clone()


fd_starved_model.input_shape = (4,)  # type: ignore[attr-defined]


def _starve(seconds: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # only stdin, stdout, stderr fit
    time.sleep(seconds)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_out_of_descriptors_freezes_nothing_and_the_hand_back_succeeds_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = xavier_nx_tree(tmp_path / "tree", gpu_limits_hz=CAPPED_GPU)
    before = clock_files(tree)
    kernel = FakeKernel()
    root = SysfsRoot(tree, hook=kernel)
    actuator = open_sysfs_actuator(root)
    actuator.follow(recover(root, tmp_path / "st"))
    record = RestoreRecord(root, tmp_path / "st")
    lowest = {k.name: k.values[0] for k in actuator.knobs()}
    highest = {k.name: k.values[-1] for k in actuator.knobs()}
    actuator.apply(lowest)
    kernel.fail_reads("sys/*", errno.EMFILE).fail_writes("sys/*", errno.EMFILE)
    with pytest.raises(TransientDeviceError):
        actuator.apply(highest)
    with pytest.raises(TransientDeviceError):
        actuator.apply({}, governed=frozenset(highest))  # the hand-back
    assert actuator.frozen() == {} and len(actuator.knobs()) == 2  # nothing given up
    with pytest.raises(IncompleteRestoreError, match="short of file descriptors"):
        actuator.restore()
    assert record.exists  # nothing lost while the restore could not run
    kernel.heal()
    actuator.apply(highest)
    assert actuator.current() == pytest.approx(highest)
    actuator.restore()
    assert clock_files(tree) == before and not record.exists

    real_write = RestoreRecord.write

    def starved(self: RestoreRecord, states: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(RestoreRecord, "write", starved)
    with pytest.raises(TransientDeviceError):
        actuator.apply(lowest)  # no record, no write: the clocks are left as they are
    assert clock_files(tree) == before and actuator.frozen() == {}
    monkeypatch.setattr(RestoreRecord, "write", real_write)
    actuator.apply(lowest)  # descriptors back: recorded, then pinned
    assert record.exists and clock_files(tree) != before
    actuator.restore()
    assert clock_files(tree) == before


def test_a_daemon_out_of_descriptors_keeps_its_knobs_and_resumes_tuning(tmp_path: Path) -> None:
    tree = xavier_nx_tree(tmp_path / "tree", gpu_limits_hz=CAPPED_GPU)
    before = clock_files(tree)
    trigger = tmp_path / "starve"
    env = {"ECOSERVE_TEST_STARVE": str(trigger), "ECOSERVE_TEST_STARVE_S": "3"}
    args = ("--device", "sysfs", "--sysfs-root", str(tree), "--restore-dir", str(tmp_path / "st"))
    args += ("--meter", "ina3221", "--model", "test_device_faults:fd_starved_model")
    args += ("--window-requests", "8", "--warmup-requests", "2", "--window-seconds", "0.5")
    d = Daemon(*args, env=env).start()
    body = {"inputs": [[0.0, 0.0, 0.0, 0.0]]}
    try:
        with httpx.Client(timeout=30) as http:  # one connection, open before the fds run out
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                assert http.post(d.url + "/v1/infer", json=body).status_code == 200
            trigger.write_text("now")
            seen_fault = False
            end = time.monotonic() + 20
            while time.monotonic() < end:
                assert http.post(d.url + "/v1/infer", json=body).status_code == 200
                s = http.get(d.url + "/v1/status", params={"windows": 0}).json()
                seen_fault = seen_fault or s["meter_fault"] is not None
                if seen_fault and s["meter_fault"] is None and s["tuner_phase"] != "pinned":
                    break
            assert seen_fault and s["meter_fault"] is None, s
            assert s["tuner_phase"] != "pinned" and s["frozen"] == {}
            assert {"cpu_freq_hz", "gpu_freq_hz"} <= set(s["config"])
    finally:
        d.signal(signal.SIGTERM)
        rc = d.wait(30)
    assert rc == 0, d.output
    assert "power meter answers again" in d.output and "frozen" not in d.output
    assert clock_files(tree) == before  # the hand-back succeeded once descriptors were free


def test_max_connections_is_kept_under_the_open_file_limit() -> None:
    assert connection_budget(512, 20000) == (512, None)
    allowed, why = connection_budget(512, 256)
    assert allowed == 256 - RESERVE and why is not None and "LimitNOFILE" in why
    with pytest.raises(ValueError, match="no room"):
        connection_budget(512, RESERVE + 2)
    # refusals linger in what the served connections leave, and never fewer than the floor
    assert lingering_budget(16, 1024) == 1024 - RESERVE - 16
    assert lingering_budget(256 - RESERVE, 256) == MIN_LINGERING


def test_a_daemon_under_ulimit_256_survives_1000_idle_connections(tmp_path: Path) -> None:
    tree = xavier_nx_tree(tmp_path / "tree", gpu_limits_hz=CAPPED_GPU)
    before = clock_files(tree)
    limited = tmp_path / "limited"
    limited.mkdir()
    (limited / "sitecustomize.py").write_text(
        "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(limited), str(REPO)])}
    args = ("--device", "sysfs", "--sysfs-root", str(tree), "--restore-dir", str(tmp_path / "st"))
    args += ("--meter", "ina3221", "--idle-timeout-s", "30", "--window-seconds", "1")
    d = Daemon(*args, env=env).start()
    sockets: list[socket.socket] = []
    try:
        assert "does not fit under the open-file limit 256" in d.output
        host, port = d.url.rsplit("/", 1)[1].split(":")
        for _ in range(1000):
            with contextlib.suppress(OSError):
                sockets.append(socket.create_connection((host, int(port)), timeout=5))
        time.sleep(1.5)  # a connection that sent nothing for a second may make room
        codes = drive(d.url, 3.0)
        assert codes and all(c == 200 for c in codes), set(codes)
        s = status(d.url)
        assert s["frozen"] == {} and s["meter_fault"] is None, s
    finally:
        for sock in sockets:
            sock.close()
        d.signal(signal.SIGTERM)
        rc = d.wait(30)
    assert rc == 0, d.output
    assert clock_files(tree) == before
