"""Crash-safe restore: the clocks' record survives SIGKILL, and the next start or
``ecoserve restore`` puts every clock back from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devices.base import DeviceError
from devices.restore_record import (
    ClockState,
    RestoreRecord,
    _process_start,
    default_restore_dir,
)
from devices.sysfs import SysfsRoot
from devices.testing import FakeKernel, xavier_nx_tree
from ecoserve.runtime.device_spec import open_device

REPO = Path(__file__).resolve().parents[1]
STATE_FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq")
STATE_FILES += ("governor", "min_freq", "max_freq", "scaling_setspeed")

#: Opens the sysfs device as the daemon does, pins the lowest clocks, says so, and waits
#: for the parent's SIGKILL.
WORKER = textwrap.dedent(
    """
    import sys, time
    from ecoserve.runtime.device_spec import open_device

    device = open_device("sysfs", sys.argv[1], restore_dir=sys.argv[2])
    device.actuator.apply({k.name: k.values[0] for k in device.actuator.knobs()})
    print("pinned", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def clock_state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted(root.rglob("*"))
        if p.name in STATE_FILES and p.is_file() and not p.is_symlink()
    }


def killed_worker(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A fake Xavier NX tree whose clocks a SIGKILLed process left pinned low."""
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    before = clock_state(tree)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tree), str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "pinned", proc.communicate()[1] if proc.poll() is not None else line
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    pinned = clock_state(tree)
    assert pinned != before
    assert pinned["sys/devices/system/cpu/cpufreq/policy0/scaling_governor"] == "userspace"
    return tree, state, before


def ecoserve_restore(tree: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ecoserve", "restore", "--sysfs-root", str(tree)]
        + ["--restore-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_sigkill_then_ecoserve_restore_puts_every_clock_back(tmp_path: Path) -> None:
    tree, state, before = killed_worker(tmp_path)
    record = RestoreRecord(SysfsRoot(tree), state)
    assert record.exists
    out = ecoserve_restore(tree, state)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "restored from" in out.stdout and "policy0" in out.stdout
    assert governed(clock_state(tree)) == governed(before)
    assert not record.exists
    again = ecoserve_restore(tree, state)
    assert again.returncode == 0 and "nothing to restore" in again.stdout


def governed(state: dict[str, str]) -> dict[str, str]:
    """The files a restore is responsible for (setspeed is the kernel's under a governor)."""
    return {k: v for k, v in state.items() if not k.endswith("scaling_setspeed")}


def test_sigkill_then_a_new_start_restores_first_and_records_the_true_originals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree, state, before = killed_worker(tmp_path)
    device = open_device("sysfs", str(tree), restore_dir=str(state))
    assert "did not exit cleanly" in caplog.text
    assert governed(clock_state(tree)) == governed(before)
    originals = {c.rel: c for c in device.actuator.original_clocks()}
    assert originals["sys/devices/system/cpu/cpufreq/policy0"].governor == "schedutil"
    # the new process pins, then a clean SIGTERM-like restore puts the true originals back
    device.actuator.apply({k.name: k.values[0] for k in device.actuator.knobs()})
    assert RestoreRecord(SysfsRoot(tree), state).exists
    device.close()
    assert governed(clock_state(tree)) == governed(before)
    assert not RestoreRecord(SysfsRoot(tree), state).exists


def test_the_record_is_written_before_the_first_write_and_removed_after_restore(
    tmp_path: Path,
) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    device = open_device("sysfs", str(tree), restore_dir=str(state))
    record = RestoreRecord(SysfsRoot(tree), state)
    assert not record.exists  # opening alone writes nothing
    device.actuator.apply({k.name: k.values[0] for k in device.actuator.knobs()})
    data = json.loads(record.path.read_text())
    assert data["pid"] == os.getpid() and len(data["clocks"]) == 4  # 3 CPU clusters, the GPU
    assert {c["kind"] for c in data["clocks"]} == {"cpufreq", "devfreq"}
    assert not list(state.glob(".restore-*"))  # the temporary file was renamed, not left
    device.actuator.restore()
    assert not record.exists
    device.actuator.apply({k.name: k.values[1] for k in device.actuator.knobs()})
    assert record.exists  # a pin after a restore (the watchdog's) records again
    device.close()
    assert not record.exists


def test_a_failed_restore_keeps_the_record(tmp_path: Path) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    rel = "sys/devices/system/cpu/cpufreq/policy0"
    record = RestoreRecord(SysfsRoot(tree), state)
    record.write([ClockState("cpufreq", rel, "ondemand", 115200, 1907200)])
    denied = RestoreRecord(
        SysfsRoot(tree, hook=FakeKernel().deny(f"{rel}/scaling_governor")), state
    )
    with pytest.raises(DeviceError, match="incomplete"):
        denied.restore()
    assert record.exists
    assert record.restore()[0].governor == "ondemand"
    assert (tree / rel / "scaling_governor").read_text().strip() == "ondemand"
    assert not record.exists


def test_a_live_owner_is_refused_and_a_corrupt_record_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    record = RestoreRecord(SysfsRoot(tree), state)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record.write([])
        data = json.loads(record.path.read_text())
        owner = {"pid": sleeper.pid, "pid_started": _process_start(sleeper.pid)}
        record.path.write_text(json.dumps({**data, **owner}))
        with pytest.raises(DeviceError, match=f"pid {sleeper.pid}"):
            open_device("sysfs", str(tree), restore_dir=str(state))
    finally:
        sleeper.kill()
        sleeper.wait()
    record.path.write_text("{ not json")
    open_device("sysfs", str(tree), restore_dir=str(state)).close()
    assert "cannot be read" in caplog.text and record.path.read_text() == "{ not json"


def test_default_restore_dir_follows_systemd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_restore_dir() == tmp_path / "a"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_restore_dir() in (Path("/var/lib/ecoserve"), tmp_path / "xdg" / "ecoserve")


def test_a_daemon_killed_with_sigkill_is_undone_by_its_next_start(tmp_path: Path) -> None:
    """The operator's sequence: serve, kill -9, serve again, stop: the box ends as it began."""
    from test_server_fixtures import Daemon

    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    before = governed(clock_state(tree))
    args = ("--device", "sysfs", "--sysfs-root", str(tree), "--restore-dir", str(state))
    args += ("--meter", "estimate", "--window-requests", "8", "--warmup-requests", "2")
    first = Daemon(*args).start()
    assert first.proc is not None
    deadline = time.monotonic() + 20
    while governed(clock_state(tree)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert governed(clock_state(tree)) != before  # it pinned the clocks
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert governed(clock_state(tree)) != before  # SIGKILL left them pinned
    second = Daemon(*args).start()
    try:
        assert "did not exit cleanly" in second.output
    finally:
        second.stop()
    assert governed(clock_state(tree)) == before
    assert not RestoreRecord(SysfsRoot(tree), state).exists


def test_without_a_writable_state_folder_the_clocks_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    before = governed(clock_state(tree))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder should be")
    device = open_device("sysfs", str(tree), restore_dir=str(blocked / "state"))
    device.actuator.apply({k.name: k.values[0] for k in device.actuator.knobs()})
    assert governed(clock_state(tree)) == before  # nothing written without a record
    frozen = device.actuator.frozen()
    assert set(frozen) == {"cpu_freq_hz", "gpu_freq_hz"}
    assert "--restore-dir" in frozen["cpu_freq_hz"] and "restore record" in caplog.text
    device.close()


def test_a_killed_writer_not_yet_reaped_or_a_reused_pid_is_not_an_owner(tmp_path: Path) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    record = RestoreRecord(SysfsRoot(tree), tmp_path / "state")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # it exits; not waited for, it stays a zombie
    try:
        record.write([])
        data = json.loads(record.path.read_text())
        record.path.write_text(json.dumps({**data, "pid": zombie.pid, "pid_started": None}))
        assert record.owner_alive() is None
        record.path.write_text(json.dumps({**data, "pid": os.getppid(), "pid_started": "1"}))
        assert record.owner_alive() is None  # a live process, but not the one that wrote it
    finally:
        zombie.wait()
