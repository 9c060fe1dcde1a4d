"""Helpers for the server tests: test models (importable as entry points) and a daemon runner.

The models are referenced as ``test_server_fixtures:NAME`` by daemons started in a
subprocess, which get this folder on ``PYTHONPATH``. No tests live here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

TESTS_DIR = Path(__file__).resolve().parent
SLOW_S = float(os.environ.get("ECOSERVE_TEST_SLOW_S", "0.1"))


def slow_model(batch: torch.Tensor) -> torch.Tensor:
    """An identity model that takes ``SLOW_S`` seconds per batch (fills queues on demand)."""
    time.sleep(SLOW_S)
    return batch.clone()


slow_model.input_shape = (4,)  # type: ignore[attr-defined]


def failing_model(batch: torch.Tensor) -> torch.Tensor:
    """Identity, except that a batch holding an item whose first value is negative fails."""
    if bool((batch[:, 0] < 0).any()):
        raise RuntimeError("negative input poisons the batch")
    return batch * 2


failing_model.input_shape = (4,)  # type: ignore[attr-defined]


class Daemon:
    """``python -m ecoserve serve`` in a subprocess on 127.0.0.1 with a free port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = ["--host", "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS_DIR), self.env.get("PYTHONPATH", "")) if p
        )
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""

    def start(self, ready: bool = True, timeout: float = 60.0) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecoserve", "serve", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + self.output)
            time.sleep(0.05)
        if ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if m and not self.url:
                self.url = m.group(1)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC server the daemon announced (``--grpc-port``)."""
        for line in self.lines:
            m = re.search(r"over gRPC on (127\.0\.0\.1:\d+)", line)
            if m:
                return m.group(1)
        raise RuntimeError("daemon announced no gRPC server:\n" + self.output)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("daemon never became ready:\n" + self.output)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def daemon(*args: str, ready: bool = True, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    d = Daemon(*args, env=env)
    try:
        yield d.start(ready=ready)
    finally:
        d.stop()


FAST = ("--window-requests", "16", "--warmup-requests", "4", "--device", "virtual:xavier-nx")


def _fails_at_step_three(micro_batch: int, state: dict) -> float:
    """A background step function whose third step raises (serving must not notice)."""
    state["n"] = state.get("n", 0) + 1
    if state["n"] >= 3:
        raise RuntimeError("the job's data went missing")
    return 0.5


def failing_job() -> object:
    """``--background test_server_fixtures:failing_job``: fails at its third step."""
    from ecoserve.background import background_job

    return background_job(_fails_at_step_three, name="failing")
