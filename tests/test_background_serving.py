"""A daemon with a background job: steps run in the idle time, serving is answered, the job
checkpoints and resumes after SIGKILL, and a failing job pauses without touching serving."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_server_fixtures import FAST, Daemon, daemon

BODY = {"input": [[[0.0] * 8] * 8]}


def _background(url: str) -> dict:
    return httpx.get(url + "/v1/status", timeout=30).json()["background"]


def _wait_for(url: str, check, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = _background(url)
        if check(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_the_job_trains_in_the_troughs_and_resumes_after_sigkill(tmp_path: Path) -> None:
    args = (
        "--model", "builtin:digits-small", "--background", "builtin:digits-finetune",
        "--restore-dir", str(tmp_path), "--background-checkpoint-every", "20", *FAST,
    )  # fmt: skip
    d = Daemon(*args).start()
    try:
        codes = [
            httpx.post(d.url + "/v1/infer", json=BODY, timeout=30).status_code for _ in range(40)
        ]
        assert codes == [200] * 40
        state = _wait_for(d.url, lambda s: (s["checkpoint_step"] or 0) >= 40)
        assert state["job"] == "digits-finetune" and state["steps"] >= 40, state
        assert 0.0 <= state["metric"]["accuracy"] <= 1.0 and not state["paused"]
        assert state["joules"] > 0 and 0 < state["busy_share"] < 1
        metrics = httpx.get(d.url + "/metrics", timeout=30).text
        assert 'ecoserve_background_steps_total{job="digits-finetune"}' in metrics
        assert 'ecoserve_background_metric{job="digits-finetune",name="accuracy"}' in metrics
        saved = state["checkpoint_step"]
        d.signal(signal.SIGKILL)
        d.wait(30)
    finally:
        d.stop()
    assert (tmp_path / "background" / "digits-finetune").is_dir()
    d2 = Daemon(*args).start()
    try:
        resumed = _background(d2.url)
        assert resumed["steps"] >= saved  # from the last checkpoint, not from zero
        assert "resumed from its checkpoint" in d2.output
    finally:
        d2.stop()


def test_a_failing_job_pauses_and_serving_goes_on(tmp_path: Path) -> None:
    args = (
        "--model", "builtin:digits-small", "--background", "test_server_fixtures:failing_job",
        "--restore-dir", str(tmp_path), *FAST,
    )  # fmt: skip
    with daemon(*args) as d:
        state = _wait_for(d.url, lambda s: s["paused"])
        assert state["paused"] and "data went missing" in state["reason"]
        assert state["steps"] == 2
        codes = [
            httpx.post(d.url + "/v1/infer", json=BODY, timeout=30).status_code for _ in range(10)
        ]
        assert codes == [200] * 10
        assert httpx.get(d.url + "/healthz", timeout=30).status_code == 200


def test_an_unknown_job_stops_the_daemon_at_start(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--background", "builtin:nope",
         "--restore-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "builtin:digits-finetune" in proc.stderr
    assert "Traceback" not in proc.stderr
