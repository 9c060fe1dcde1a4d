"""The restore itself under faults: a broken limit file, a corrupt record, a record elsewhere.

The fake Xavier NX here has its GPU capped as well as its CPUs, so neither a pinned value
nor the hardware range can pass for an original: a clock that ends as it began was put back.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from test_server_fixtures import Daemon

from devices.discovery import open_sysfs_actuator
from devices.restore_record import IncompleteRestoreError, RestoreRecord, recover
from devices.sysfs import SysfsRoot
from devices.testing import FakeKernel, xavier_nx_tree
from ecoserve.runtime.device_spec import open_device

REPO = Path(__file__).resolve().parents[1]
GPU = "sys/devices/17000000.gv11b/devfreq/17000000.gv11b"
GPU_NODE = "sys/class/devfreq/17000000.gv11b"  # how the actuator and the record name it
CPU0 = "sys/devices/system/cpu/cpufreq/policy0"
CAP = (306000000, 956250000)
STATE_FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq")
STATE_FILES += ("governor", "min_freq", "max_freq")
SERVE = ("--device", "sysfs", "--meter", "estimate", "--window-requests", "8")
SERVE += ("--warmup-requests", "2", "--window-seconds", "1")
BODY = {"inputs": [[[[0.0] * 32] * 32] * 3]}


def board(tmp_path: Path) -> Path:
    return xavier_nx_tree(tmp_path / "tree", gpu_limits_hz=CAP)


def clock_state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted(root.rglob("*"))
        if p.name in STATE_FILES and p.is_file() and not p.is_symlink()
    }


def ecoserve_restore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecoserve", "restore", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def status(url: str) -> dict:
    return httpx.get(url + "/v1/status", params={"windows": 0}, timeout=5).json()


def serve_until_pinned(tree: Path, before: dict[str, str], *args: str, **kw) -> Daemon:
    d = Daemon(*SERVE, *args, **kw).start()
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=10) as http:
        while clock_state(tree) == before and time.monotonic() < deadline:
            http.post(d.url + "/v1/infer", json=BODY)
    assert clock_state(tree) != before, d.output
    return d


# -- a limit file that breaks ------------------------------------------------------------


def test_a_broken_min_freq_does_not_keep_max_freq_pinned(tmp_path: Path) -> None:
    tree = board(tmp_path)
    before = clock_state(tree)
    kernel = FakeKernel()
    root = SysfsRoot(tree, hook=kernel)
    actuator = open_sysfs_actuator(root)
    actuator.follow(recover(root, tmp_path / "st"))
    actuator.apply({k.name: k.values[0] for k in actuator.knobs()})
    assert (tree / GPU / "max_freq").read_text().strip() == "114750000"
    broken = f"{GPU_NODE}/min_freq"
    kernel.fail_reads(broken, errno.EIO).fail_writes(broken, errno.EIO)
    with pytest.raises(IncompleteRestoreError) as failed:
        actuator.restore()
    # every other limit went back: the GPU's max and every CPU clock
    assert (tree / GPU / "max_freq").read_text().strip() == str(CAP[1])
    now = clock_state(tree)
    assert {k: v for k, v in now.items() if "cpufreq" in k} == {
        k: v for k, v in before.items() if "cpufreq" in k
    }
    assert [u.clock.rel for u in failed.value.remaining] == [GPU_NODE]
    assert broken in str(failed.value) and failed.value.reported
    _, kept = RestoreRecord(root, tmp_path / "st").read()
    assert [(c.rel, c.min, c.max) for c in kept] == [(GPU_NODE, *CAP)]  # what remains, alone
    kernel.heal()
    actuator.restore()
    assert clock_state(tree) == before
    assert not RestoreRecord(root, tmp_path / "st").exists


def test_a_limit_file_failing_mid_serve(tmp_path: Path) -> None:
    """Serving goes on; SIGTERM exits 0 with one line; `restore` and the next start carry on."""
    tree = board(tmp_path)
    before = clock_state(tree)
    state = tmp_path / "st"
    args = ("--sysfs-root", str(tree), "--restore-dir", str(state))
    d = serve_until_pinned(tree, before, *args)
    try:
        (tree / GPU / "min_freq").unlink()
        (tree / GPU / "min_freq").mkdir()  # broken: every read and write answers EISDIR
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=10) as http:
            while "gpu_freq_hz" not in status(d.url)["frozen"] and time.monotonic() < deadline:
                assert http.post(d.url + "/v1/infer", json=BODY).status_code == 200
        assert "gpu_freq_hz" in status(d.url)["frozen"]
    finally:
        d.signal(signal.SIGTERM)
        rc = d.wait(30)
    assert rc == 0, d.output
    assert "Traceback" not in d.output and d.output.count("restore incomplete") == 1
    now = clock_state(tree)
    assert now[f"{GPU}/max_freq"] == str(CAP[1])  # the other limit was handed back
    assert {k: v for k, v in now.items() if "cpufreq" in k} == {
        k: v for k, v in before.items() if "cpufreq" in k
    }
    record = RestoreRecord(SysfsRoot(tree), state)
    assert [c.rel for c in record.read()[1]] == [GPU_NODE]  # only what could not go back

    out = ecoserve_restore(*args)
    assert out.returncode == 1 and "could not put back" in out.stdout, out.stdout + out.stderr
    assert "min_freq" in out.stdout and "Fix:" in out.stdout and record.exists

    again = Daemon(*SERVE, *args).start()  # no crash loop: it serves, leaving the GPU alone
    try:
        assert "could not put back" in again.output
        s = status(again.url)
        assert "gpu_freq_hz" not in s["config"] and "cpu_freq_hz" in s["config"]
        (tree / GPU / "min_freq").rmdir()
        (tree / GPU / "min_freq").write_text("114750000\n")  # repaired, still wrong
    finally:
        again.signal(signal.SIGTERM)
        rc = again.wait(30)
    assert rc == 0, again.output
    assert "put back at last" in again.output
    assert clock_state(tree) == before and not record.exists


# -- a record that cannot be read --------------------------------------------------------

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


def killed_while_pinned(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    tree, state = board(tmp_path), tmp_path / "st"
    before = clock_state(tree)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tree), str(state)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "pinned"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return tree, state, before


def corrupt(record: RestoreRecord, how: str) -> bytes:
    data = json.loads(record.path.read_text())
    if how == "cut short":
        text = record.path.read_text()[:200]
    elif how == "a string for a number":
        data["clocks"][0]["min"] = str(data["clocks"][0]["min"])
        text = json.dumps(data)
    else:  # wrong nesting
        data["clocks"] = {c["rel"]: c for c in data["clocks"]}
        text = json.dumps(data)
    record.path.write_text(text)
    return record.path.read_bytes()


@pytest.mark.parametrize(
    ("how", "fix"),
    [("cut short", "table"), ("a string for a number", "xavier-nx"), ("wrong nesting", "orin")],
)
def test_a_corrupt_record_is_kept_and_nothing_is_tuned_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str, fix: str
) -> None:
    tree, state, before = killed_while_pinned(tmp_path)
    pinned = clock_state(tree)
    record = RestoreRecord(SysfsRoot(tree), state)
    text = corrupt(record, how)

    device = open_device("sysfs", str(tree), restore_dir=str(state))
    assert "cannot be read" in caplog.text and "--from-board" in caplog.text
    device.actuator.apply({k.name: k.values[-1] for k in device.actuator.knobs()})
    frozen = device.actuator.frozen()
    assert set(frozen) == {"cpu_freq_hz", "gpu_freq_hz"} and "ERECORD" in frozen["gpu_freq_hz"]
    device.close()
    assert clock_state(tree) == pinned  # not tuned, and the pinned values were not recorded
    assert record.path.read_bytes() == text  # kept as it was

    out = ecoserve_restore("--sysfs-root", str(tree), "--restore-dir", str(state))
    assert out.returncode == 1 and "cannot be read" in out.stdout and "--from-board" in out.stdout
    assert record.path.read_bytes() == text  # the same verdict as a start: kept

    if fix == "table":  # the originals, written down by hand or saved from a sibling board
        table = tmp_path / "clocks.json"
        clocks = [c for c in json.loads(_pristine_record(tmp_path))["clocks"]]
        table.write_text(json.dumps(clocks))
        fix = str(table)
    out = ecoserve_restore(
        "--sysfs-root", str(tree), "--restore-dir", str(state), "--from-board", fix
    )
    if fix == "orin":  # another board's profile: refused, nothing written
        assert out.returncode == 2 and "not the table of orin" in out.stderr, out.stdout
        assert record.path.read_bytes() == text and clock_state(tree) == pinned
        return
    assert out.returncode == 0, out.stdout + out.stderr
    assert not record.exists
    now = clock_state(tree)
    if fix == "xavier-nx":  # the board's defaults: governed over the whole range
        assert now[f"{CPU0}/scaling_governor"] == "schedutil"
        assert (now[f"{CPU0}/scaling_min_freq"], now[f"{CPU0}/scaling_max_freq"]) == (
            "115200",
            "1907200",
        )
        assert (now[f"{GPU}/governor"], now[f"{GPU}/min_freq"], now[f"{GPU}/max_freq"]) == (
            "nvhost_podgov",
            "114750000",
            "1109250000",
        )
    else:
        assert now == before


def _pristine_record(tmp_path: Path) -> str:
    """The record an untouched board of this kind gets: its true originals."""
    tree = board(tmp_path / "pristine")
    record = RestoreRecord(SysfsRoot(tree), tmp_path / "pristine-st")
    actuator = open_sysfs_actuator(SysfsRoot(tree))
    record.write(actuator.original_clocks())
    return record.path.read_text()


def test_a_daemon_on_a_corrupt_record_serves_without_touching_the_clocks(tmp_path: Path) -> None:
    tree, state, _ = killed_while_pinned(tmp_path)
    pinned = clock_state(tree)
    record = RestoreRecord(SysfsRoot(tree), state)
    text = corrupt(record, "a string for a number")
    d = Daemon(*SERVE, "--sysfs-root", str(tree), "--restore-dir", str(state)).start()
    try:
        with httpx.Client(timeout=10) as http:
            for _ in range(20):
                assert http.post(d.url + "/v1/infer", json=BODY).status_code == 200
        s = status(d.url)
        assert set(s["frozen"]) >= {"cpu_freq_hz", "gpu_freq_hz"}
        assert "cannot be read" in d.output and "unreadable; removing it" not in d.output
    finally:
        d.signal(signal.SIGTERM)
        rc = d.wait(30)
    assert rc == 0, d.output
    assert clock_state(tree) == pinned and record.path.read_bytes() == text


# -- the record where serve keeps it -----------------------------------------------------


@pytest.mark.parametrize("source", ["toml", "environment"])
def test_restore_finds_the_record_where_serve_wrote_it(tmp_path: Path, source: str) -> None:
    """serve with restore_dir from its config or environment file, SIGKILL, then the unit's
    ``ecoserve restore``: the same settings lead both to the same record."""
    tree = board(tmp_path)
    before = clock_state(tree)
    state = tmp_path / "elsewhere"
    settings = {"sysfs_root": str(tree), "restore_dir": str(state)}
    if source == "toml":
        config = tmp_path / "ecoserve.toml"
        config.write_text("".join(f'{k} = "{v}"\n' for k, v in settings.items()))
        args, env = ("--config", str(config)), {}
    else:
        args, env = (), {f"ECOSERVE_{k.upper()}": v for k, v in settings.items()}
    d = serve_until_pinned(tree, before, *args, env=env)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    assert RestoreRecord(SysfsRoot(tree), state).exists and clock_state(tree) != before
    out = ecoserve_restore(*args, env=env)
    assert out.returncode == 0 and "restored from" in out.stdout, out.stdout + out.stderr
    assert clock_state(tree) == before


def test_the_unit_restores_with_the_settings_it_serves_with() -> None:
    unit = (REPO / "examples" / "ecoserve.service").read_text()
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    post = next(line for line in unit.splitlines() if line.startswith("ExecStopPost="))
    assert start.split(" serve ", 1)[1] in post  # the same --config
    assert "EnvironmentFile=" in unit  # and the same environment, for every Exec line
