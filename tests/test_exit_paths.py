"""Clocks are restored on every way a process can stop, checked on the files themselves.

A worker process opens the sysfs device on a fake Xavier NX tree (the same path
``ecoserve serve --device sysfs`` takes), pins the lowest clocks, says so, and then ends in
one of the ways a daemon ends: normally, SIGTERM, SIGINT, an exception escaping a worker
thread, the runtime's loop crashing under a failing batch function, or hanging (where the
watchdog, not an exit, must hand the clocks back). Afterwards every clock file must read
what it read before the worker started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devices.testing import nano_tree, orin_tree, x86_tree, xavier_nx_tree
from ecoserve.runtime.device_spec import open_device

REPO = Path(__file__).resolve().parents[1]

STATE_FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq")
STATE_FILES += ("governor", "min_freq", "max_freq")

WORKER = textwrap.dedent(
    """
    import asyncio, signal, sys, threading, time

    from ecoserve.runtime.device_spec import open_device
    from devices.safety import guarded

    root, mode = sys.argv[1], sys.argv[2]
    # A parent that ignores SIGINT would pass that on; a terminal's Ctrl-C does not.
    signal.signal(signal.SIGINT, signal.default_int_handler)


    class Crash(BaseException):
        # Not an Exception: the runtime's per-batch error handling does not catch it.
        pass


    def crash_runtime(device):
        from ecoserve.core.assembly import EngineSettings
        from ecoserve.runtime.build import build_runtime

        def batch_fn(batch):
            raise Crash("batch function crashed")

        settings = EngineSettings(device="sysfs", sysfs_root=root, tuner="fixed")

        async def serve():
            runtime = build_runtime(batch_fn, settings, device=device)
            await runtime.start()
            runtime.submit_nowait(0)
            loop = [t for t in asyncio.all_tasks() if t.get_name() == "ecoserve-dispatch"]
            await loop[0]

        asyncio.run(serve())


    def crash_thread():
        failed = []

        def serve():
            try:
                raise RuntimeError("worker thread crashed")
            except RuntimeError as exc:
                failed.append(exc)
                raise

        worker = threading.Thread(target=serve)
        worker.start()
        worker.join()
        raise SystemExit(f"serving thread died: {failed[0]}")


    device = open_device("sysfs", root)
    timeout = 0.2 if mode == "hang" else None
    with guarded(device, watchdog_timeout_s=timeout) as guard:
        device.actuator.apply({k.name: k.values[0] for k in device.actuator.knobs()})
        guard.feed()
        print("pinned", flush=True)
        if mode in ("normal", "thread", "runtime"):
            sys.stdin.readline()  # the parent looks at the pinned tree, then says go
        if mode == "thread":
            crash_thread()
        elif mode == "runtime":
            crash_runtime(device)
        elif mode in ("sigterm", "sigint", "hang"):
            while True:
                time.sleep(0.05)  # a stuck batch: no feed() ever again
    device.close()
    print("closed", flush=True)
    """
)


def clock_state(root: Path) -> dict[str, str]:
    """Every clock setting a restore must put back (kernel-derived ``cur`` files excluded)."""
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted(root.rglob("*"))
        if p.name in STATE_FILES and p.is_file() and not p.is_symlink()
    }


def start_worker(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    tree = xavier_nx_tree(tmp_path / "tree")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tree), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "pinned":
        proc.kill()
        raise AssertionError(f"worker did not pin: {line!r} {proc.communicate()[1]}")
    return proc, tree


def assert_pinned_low(tree: Path, before: dict[str, str]) -> None:
    now = clock_state(tree)
    assert now != before
    policy = "sys/devices/system/cpu/cpufreq/policy0"
    assert now[f"{policy}/scaling_governor"] == "userspace"
    assert (tree / policy / "scaling_setspeed").read_text().strip() == "115200"
    gpu = "sys/devices/17000000.gv11b/devfreq/17000000.gv11b"
    assert now[f"{gpu}/min_freq"] == now[f"{gpu}/max_freq"] == "114750000"


def original_state(tmp_path: Path) -> dict[str, str]:
    return clock_state(xavier_nx_tree(tmp_path / "pristine"))


@pytest.mark.parametrize(
    ("mode", "action", "expected_rc"),
    [
        ("normal", "go", 0),
        ("sigterm", signal.SIGTERM, -signal.SIGTERM),
        ("sigint", signal.SIGINT, None),
        ("thread", "go", 1),
    ],
)
def test_clocks_restored_when_the_process_ends(tmp_path, mode, action, expected_rc):
    before = original_state(tmp_path)
    proc, tree = start_worker(tmp_path, mode)
    try:
        assert_pinned_low(tree, before)
        if action == "go":
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        else:
            proc.send_signal(action)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    if expected_rc is None:  # SIGINT: KeyboardInterrupt, however the interpreter reports it
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
    else:
        assert proc.returncode == expected_rc, err
    if mode == "normal":
        assert "closed" in out
    if mode == "thread":
        assert "serving thread died" in err
    assert clock_state(tree) == before


def test_clocks_restored_when_the_runtime_loop_crashes(tmp_path):
    before = original_state(tmp_path)
    proc, tree = start_worker(tmp_path, "runtime")
    try:
        assert_pinned_low(tree, before)
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "batch function crashed" in err
    assert clock_state(tree) == before


def test_watchdog_hands_clocks_back_while_the_process_hangs(tmp_path):
    before = original_state(tmp_path)
    proc, tree = start_worker(tmp_path, "hang")
    try:
        deadline = time.monotonic() + 10
        while clock_state(tree) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clock_state(tree) == before
        assert proc.poll() is None  # still hung: the watchdog did it, not an exit path
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("build", [xavier_nx_tree, nano_tree, orin_tree, x86_tree])
def test_open_device_sysfs_end_to_end_on_each_board(tmp_path, build):
    tree = build(tmp_path)
    before = clock_state(tree)
    device = open_device("sysfs", str(tree))
    try:
        knobs = device.actuator.knobs()
        assert knobs
        lowest = {k.name: k.values[0] for k in knobs}
        device.actuator.apply(lowest)
        assert device.actuator.current() == pytest.approx(lowest)
        assert clock_state(tree) != before
        e0 = device.meter.energy_joules()
        time.sleep(0.05)
        joules = device.meter.energy_joules() - e0
        if build is x86_tree:
            # The fake RAPL counter never moves, but it is the meter found, under the root.
            assert device.meter.source.startswith("rapl") and joules == 0
        else:
            assert device.meter.source.startswith("ina3221") and not device.meter.estimated
            assert joules > 0
    finally:
        device.close()
    assert clock_state(tree) == before


DECORATED_WORKER = textwrap.dedent(
    """
    import sys, time

    import eco_edge_infer

    root = sys.argv[1]


    @eco_edge_infer.inference_method(device="sysfs", sysfs_root=root, tuner="fixed",
                                     window_requests=4, warmup_requests=0)
    def ident(batch):
        return batch


    ident.start()
    actuator = ident.runtime.device.actuator
    actuator.apply({k.name: k.values[0] for k in actuator.knobs()})
    print("pinned", flush=True)
    while True:  # a script that serves until it is killed
        ident(1)
        time.sleep(0.05)
    """
)


def test_decorated_script_killed_by_sigterm_restores_the_clocks(tmp_path):
    """The decorator's own exit path: SIGTERM skips atexit, so it must restore on the signal."""
    before = original_state(tmp_path)
    tree = xavier_nx_tree(tmp_path / "tree")
    script = tmp_path / "decorated.py"
    script.write_text(DECORATED_WORKER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tree)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "pinned", proc.stderr.read() if proc.stderr else line
        assert_pinned_low(tree, before)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert clock_state(tree) == before
