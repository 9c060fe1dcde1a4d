"""One tuner per board: a second process that would tune the same clocks is refused and told
who holds them; a holder killed with SIGKILL leaves a lock the next one takes over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from devices.board_lock import BoardLock, ClocksInUseError, lock_path, take_board_lock
from devices.testing import nano_tree, xavier_nx_tree
from ecoserve.runtime.device_spec import open_device

REPO = Path(__file__).resolve().parents[1]

#: Opens the sysfs device as a daemon does, says so, and waits to be killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from ecoserve.runtime.device_spec import open_device

    device = open_device("sysfs", sys.argv[1], restore_dir=sys.argv[2])
    print("holding", flush=True)
    while True:
        time.sleep(0.05)
    """
)


@pytest.fixture
def holder(tmp_path: Path):
    """A live process holding the clocks of a fake Xavier NX tree: (process, tree, state)."""
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tree), str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "holding", proc.communicate()[1] if proc.poll() is not None else line
    try:
        yield proc, tree, state
    finally:
        proc.kill()
        proc.communicate()


def test_a_second_daemon_on_the_same_clocks_is_refused_naming_the_holder(holder) -> None:
    proc, tree, state = holder
    out = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--device", "sysfs"]
        + ["--sysfs-root", str(tree), "--restore-dir", str(state), "--meter", "estimate"]
        + ["--port", "0", "--no-baseline-at-start"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"pid {proc.pid}, started " in out.stderr
    assert "one tuner per board" in out.stderr and "holder.py" in out.stderr


def test_the_same_root_by_another_spelling_is_the_same_lock(holder) -> None:
    proc, tree, state = holder
    other_spelling = f"{tree}/./sys/.."
    with pytest.raises(ClocksInUseError, match=f"pid {proc.pid}"):
        open_device("sysfs", other_spelling, restore_dir=str(state))


def test_a_sigkilled_holder_s_lock_is_taken_over(holder) -> None:
    proc, tree, state = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    path = lock_path(tree, state)
    assert json.loads(path.read_text())["pid"] == proc.pid  # the dead holder's file is left
    device = open_device("sysfs", str(tree), restore_dir=str(state))
    try:
        assert device.lock is not None and device.lock.held
        assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        device.close()
    assert not device.lock.held and path.read_text() == ""


def test_close_releases_the_lock_and_other_boards_are_independent(tmp_path: Path) -> None:
    tree, other = xavier_nx_tree(tmp_path / "nx"), nano_tree(tmp_path / "nano")
    state = str(tmp_path / "state")
    first = open_device("sysfs", str(tree), restore_dir=state)
    nano = open_device("sysfs", str(other), restore_dir=state)  # another root: no conflict
    with pytest.raises(ClocksInUseError, match=f"pid {os.getpid()}"):
        open_device("sysfs", str(tree), restore_dir=state)
    first.close()
    first.close()  # idempotent
    open_device("sysfs", str(tree), restore_dir=state).close()
    nano.close()


def test_only_devices_that_write_clocks_take_the_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for spec in ("virtual:xavier-nx", "none"):
        device = open_device(spec, str(tmp_path), restore_dir=str(state))
        assert device.lock is None
        device.close()
    assert not state.exists() or not list(state.glob("tuner-*.lock"))


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    tree = xavier_nx_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with pytest.raises(ValueError):
        open_device("sysfs", str(tree), meter="no-such-meter", restore_dir=str(state))
    BoardLock.acquire(tree, state).release()  # free again


def test_an_unwritable_lock_folder_warns_and_locks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder should be")
    assert take_board_lock(tmp_path, blocked / "state") is None
    assert "cannot take the tuner lock" in caplog.text
