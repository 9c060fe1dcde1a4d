"""``ecoserve serve --next-tier``: two daemons over real sockets, split and cascaded."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from test_server_fixtures import FAST, Daemon, daemon

from ecoserve.models.cascade import confidence
from ecoserve.models.digits import load_digits_model, load_digits_split

#: The device tier sleeps so its stages take 100x this CPU's time (~9 ms for digits-large):
#: on loopback, forwarding must be worth it on a fast link and not on a slow one. One torch
#: thread: on a busy machine two threads wait on each other, the stage profile measured at
#: start reads 10-20x the real time, and the slowed warm-up outlasts the readiness wait.
SLOWDOWN = ("--tier-slowdown", "100", "--torch-threads", "1")
THRESHOLD = 0.9
#: The split point planned from the stage profiles and the link estimate.
PLANNED = ("--tuner", "neurosurgeon")
#: The edge's tier routes need it; the device daemons send it.
TOKEN = ("--tier-token", "s3cret")


@pytest.fixture(scope="module")
def edge() -> Iterator[Daemon]:
    with daemon("--model", "builtin:digits-large", *FAST, "--serve-tier", *TOKEN) as d:
        yield d


@pytest.fixture(scope="module")
def x_test() -> torch.Tensor:
    return load_digits_split().x_test[:48]


def infer_npy(url: str, x: torch.Tensor) -> np.ndarray:
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    resp = httpx.post(
        url + "/v1/infer",
        content=buf.getvalue(),
        headers={"content-type": "application/octet-stream", "accept": "application/octet-stream"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return np.load(io.BytesIO(resp.content))


def tier_status(url: str) -> dict[str, Any]:
    tier = httpx.get(url + "/v1/status", params={"windows": 0}, timeout=5).json()["tier"]
    assert tier is not None
    return tier  # type: ignore[no-any-return]


def unsplit(x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return load_digits_model("large")(x).numpy()


def test_split_forwards_on_a_fast_link(edge: Daemon, x_test: torch.Tensor) -> None:
    args = ("--next-tier", edge.url, "--link-emulation", "1000mbit", *SLOWDOWN, *PLANNED, *TOKEN)
    with daemon("--model", "builtin:digits-large", *FAST, *args) as device:
        # the first estimate may come from a probe slowed by both daemons' start-up on one
        # machine; the idle probes every 2 s correct it, so give it a few seconds
        deadline = time.monotonic() + 20
        while True:
            out = infer_npy(device.url, x_test)
            np.testing.assert_allclose(out, unsplit(x_test), rtol=1e-4, atol=1e-4)
            tier = tier_status(device.url)
            if tier["split"] < tier["n_stages"] or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        # the tuner's split applies from the next batch on
        np.testing.assert_allclose(
            infer_npy(device.url, x_test), unsplit(x_test), rtol=1e-4, atol=1e-4
        )
        tier = tier_status(device.url)
    assert tier["mode"] == "split"
    assert tier["split"] < tier["n_stages"] == 7, tier
    assert tier["rows_forwarded"] > 0 and tier["fallbacks"] == 0
    assert tier["next_tier"]["url"] == edge.url


def test_split_stays_local_on_a_slow_link(edge: Daemon, x_test: torch.Tensor) -> None:
    args = ("--next-tier", edge.url, "--link-emulation", "0.05mbit", *SLOWDOWN, *PLANNED, *TOKEN)
    with daemon("--model", "builtin:digits-large", *FAST, *args) as device:
        out = infer_npy(device.url, x_test[:8])
        np.testing.assert_allclose(out, unsplit(x_test[:8]), rtol=1e-4, atol=1e-4)
        tier = tier_status(device.url)
    assert tier["split"] == tier["n_stages"] == 7
    assert tier["rows_forwarded"] == 0
    # On a loaded machine a probe may time out and mark the link down: still local, and fine.
    assert tier["link"]["down"] or tier["link"]["bandwidth_bps"] < 1e6


def test_cascade_follows_the_threshold_rule(edge: Daemon, x_test: torch.Tensor) -> None:
    args = ("--next-tier", edge.url, "--tier-mode", "cascade", *TOKEN)
    with daemon(
        "--model", "builtin:digits-small", *FAST, *args, "--cascade-threshold", str(THRESHOLD)
    ) as device:
        out = infer_npy(device.url, x_test)
        tier = tier_status(device.url)
    with torch.inference_mode():
        small = load_digits_model("small")(x_test)
    score, _ = confidence(small)
    keep = (score >= THRESHOLD).numpy()
    assert 0 < keep.sum() < len(keep), "the sample should hold both kinds of rows"
    expected = np.where(keep[:, None], small.numpy(), unsplit(x_test))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert tier["mode"] == "cascade" and tier["threshold"] == THRESHOLD
    assert tier["rows_forwarded"] >= int((~keep).sum()) and tier["fallbacks"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_next_tier_starts_with_a_warning_and_answers_here(
    x_test: torch.Tensor,
) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    with daemon("--model", "builtin:digits-large", *FAST, "--next-tier", dead) as device:
        out = infer_npy(device.url, x_test[:4])
        tier = tier_status(device.url)
        log = device.output
    np.testing.assert_allclose(out, unsplit(x_test[:4]), rtol=1e-4, atol=1e-4)
    assert "next tier not reachable at start" in log
    assert tier["link"]["down"] and tier["split"] == 7 and tier["rows_forwarded"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--next-tier", "edge:8000"), "next_tier must be an http:// or https:// URL"),
        (
            ("--model", "builtin:transformer", "--next-tier", "http://127.0.0.1:9"),
            "needs an nn.Sequential model",
        ),
        (("--link-emulation", "10mbps"), "bad rate unit"),
    ],
)
def test_bad_tier_settings_refuse_to_start(args: tuple[str, ...], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ecoserve", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_tier_routes_are_served_only_when_asked_and_behind_the_token(edge: Daemon) -> None:
    with daemon("--model", "builtin:digits-large", *FAST) as plain:
        assert httpx.get(plain.url + "/v1/tier/ping", timeout=5).status_code == 404
    assert httpx.get(edge.url + "/v1/tier/ping", timeout=5).status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    assert httpx.get(edge.url + "/v1/tier/ping", headers=auth, timeout=5).status_code == 200
    buf = io.BytesIO()
    np.save(buf, np.full((1, 1, 8, 8), np.nan, dtype=np.float32))
    resp = httpx.post(edge.url + "/v1/tier/split/0", content=buf.getvalue(), headers=auth)
    assert resp.status_code == 422 and "NaN" in resp.json()["detail"]
