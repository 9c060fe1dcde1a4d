"""``ecoserve top``: the view's lines from a status, and the real command in a pseudo-terminal."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pexpect
import pytest
from rich.console import Console
from test_server_fixtures import FAST, Daemon

from ecoserve.top import Screen, render, sparkline

ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9]|[=>78])")
STATUS = {
    "model": "cnn",
    "device": "virtual:xavier-nx",
    "ready": True,
    "draining": False,
    "uptime_s": 75.0,
    "phase": "tuning",
    "tuner_phase": "climb",
    "config": {"cpu_freq_hz": 1_190_400_000.0, "gpu_freq_hz": 306_000_000.0, "batch_size": 10},
    "knobs": {
        "cpu_freq_hz": [115_200_000.0, 1_190_400_000.0, 1_907_200_000.0],
        "gpu_freq_hz": [114_750_000.0, 306_000_000.0, 1_109_250_000.0],
        "batch_size": list(range(1, 17)),
    },
    "pinned": {"gpu_freq_hz": 306_000_000.0},
    "baseline": {"energy_per_request_j": 0.012, "latency_s": 0.008},
    "windows_closed": 42,
    "windows": [
        {
            "cost": 0.9 - 0.01 * i,
            "energy_per_request_j": 0.01,
            "latency_p50_s": 0.012,
            "latency_p99_s": 0.04,
            "arrival_rate": 20.0 + i,
        }
        for i in range(30)
    ],
    "tuner": {"name": "ecogd"},
    "queue_depth": 3,
    "settings": {"max_queue": 1024},
    "counters": {"accepted": 10, "completed": 9, "failed": 0, "rejected": {"queue_full": 2}},
    "device_warnings": ["cpu_freq_hz: permission denied writing scaling_setspeed"],
    "tier": None,
}


def text_of(screen: Screen) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render(screen, now=100.0))
    return console.export_text()


def test_the_view_shows_the_configuration_the_status_reports() -> None:
    out = text_of(Screen("http://127.0.0.1:8000", status=STATUS, seen_at=99.0))
    lines = out.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "cnn on virtual:xavier-nx" in out and "ready" in out
    assert re.search(r"cpu\s+1\.19 GHz .* 2/3 ", out)
    assert re.search(r"gpu\s+306 MHz .* 2/3 .*pinned", out)
    assert re.search(r"batch\s+10 .* 10/16", out)
    assert "tuner ecogd" in out and "phase climb" in out and "windows 42" in out
    assert "0.610" in out and "49.0" in out  # the last window's cost and arrival rate
    assert "rejected queue_full=2" in out and "permission denied" in out


def test_the_view_says_when_the_daemon_is_gone_or_starting() -> None:
    gone = Screen("http://127.0.0.1:8000", status=STATUS, seen_at=40.0, error="ConnectError")
    out = text_of(gone)
    assert "UNREACHABLE, last seen 1m00s ago" in out and "retrying" in out
    starting = text_of(Screen("http://x", status={**STATUS, "ready": False}))
    assert "STARTING" in starting
    assert "no status yet" in text_of(Screen("http://x", error="ConnectError"))


def test_the_view_shows_frozen_knobs_and_a_fleet_when_the_status_has_them() -> None:
    status = {
        **STATUS,
        "frozen": {"gpu_freq_hz": "EIO writing max_freq"},
        "boards": [
            {"name": "nx-1", "state": "awake"},
            {"name": "nx-2", "state": "awake"},
            {"name": "nano-1", "state": "parked"},
        ],
    }
    out = text_of(Screen("http://x", status=status))
    assert "frozen knobs: gpu_freq_hz (EIO writing max_freq)" in out
    assert "boards: 2 awake (nx-1 nx-2), 1 parked" in out
    assert "frozen" not in text_of(Screen("http://x", status=STATUS))


def test_the_view_has_a_row_per_model_on_a_shared_board() -> None:
    windows = [*STATUS["windows"][:-1], {**STATUS["windows"][-1], "per_model": {
        "a_cnn": {"latency_p99_s": 0.0314}, "b_digits": {"latency_p99_s": 0.0052},
    }}]  # fmt: skip
    models = {
        "a_cnn": {"batch_size": 8, "requests": 120, "loaded": True, "loads": 1},
        "b_digits": {
            "batch_size": 3,
            "requests": 7,
            "loaded": False,
            "reason": "unloaded by request",
        },
    }
    config = {**STATUS["config"], "batch_size:a_cnn": 8}
    status = {**STATUS, "windows": windows, "models": models, "config": config}
    out = text_of(Screen("http://x", status=status))
    assert re.search(r"b:a_cnn\s+8 ", out)  # each model's batch knob named by its model
    assert re.search(r"a_cnn\s+8\s+120\s+31\.4\s+loaded", out)
    assert re.search(r"b_digits\s+3\s+7\s+5\.2\s+unloaded \(unloaded by request\)", out)
    assert "a_cnn" not in text_of(Screen("http://x", status=STATUS))  # one model: no table


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, 1.0], 8) == "▅▅"
    assert sparkline([float("nan"), 2.0, 1.0], 1) == "▅"
    assert sparkline([], 5) == ""


# -- the command in a pseudo-terminal -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Terminal:
    """``ecoserve top`` in an 80x24 pty; ``text`` is everything it drew, escapes removed."""

    def __init__(self, url: str) -> None:
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "ecoserve", "top", "--url", url, "--interval", "0.3"],
            dimensions=(24, 80),
            env=env,
            encoding="utf-8",
            codec_errors="replace",
        )
        self.raw = ""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                pass

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pump(0.2)
            m = re.compile(pattern).search(self.text, since)
            if m:
                return m
        raise AssertionError(f"{pattern!r} never appeared; screen ended with:\n{self.text[-2000:]}")


@pytest.fixture()
def loaded_daemon() -> Iterator[tuple[Daemon, int]]:
    port = _free_port()
    d = Daemon(*FAST, "--port", str(port), "--window-seconds", "2")
    d.start()
    stop = threading.Event()

    def load() -> None:
        body = {"inputs": [[[[0.0] * 32] * 32] * 3]}
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                try:
                    http.post(f"http://127.0.0.1:{port}/v1/infer", json=body)
                except httpx.HTTPError:
                    time.sleep(0.2)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        yield d, port
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        d.stop()


def test_top_follows_a_daemon_under_load_survives_a_restart_and_quits_on_q(
    loaded_daemon: tuple[Daemon, int],
) -> None:
    daemon, port = loaded_daemon
    url = f"http://127.0.0.1:{port}"
    term = Terminal(url)
    try:
        term.wait_for(r"ready", timeout=20)
        # the batch size on screen is one the daemon reported, and it moves with the tuner
        shown: set[int] = set()
        reported: set[int] = set()
        windows: set[int] = set()
        end = time.monotonic() + 12
        while time.monotonic() < end and (len(windows) < 3 or not shown & reported):
            status = httpx.get(url + "/v1/status", params={"windows": 0}, timeout=5).json()
            reported.add(int(status["config"]["batch_size"]))
            start = len(term.text)
            term.pump(0.5)
            frame = term.text[start:]
            shown.update(int(b) for b in re.findall(r"batch\s+(\d+) ", frame))
            windows.update(int(w) for w in re.findall(r"windows (\d+)", frame))
        assert shown & reported, (shown, reported)
        assert len(windows) >= 3, windows  # windows closed and the screen followed
        assert "tuner ecogd" in term.text and "cnn on virtual:" in term.text
        # the daemon goes away: the screen says so, and keeps trying
        daemon.stop()
        mark = len(term.text)
        term.wait_for(r"UNREACHABLE", timeout=10, since=mark)
        # a new daemon on the same port: the screen comes back by itself
        again = Daemon(*FAST, "--port", str(port))
        again.start()
        try:
            mark = len(term.text)
            term.wait_for(r"windows \d+", timeout=20, since=mark)
            term.wait_for(r"ready", timeout=20, since=mark)
        finally:
            term.child.send("q")
            term.child.expect(pexpect.EOF, timeout=10)
            again.stop()
        term.child.close()
        assert term.child.exitstatus == 0, term.text[-1000:]
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
