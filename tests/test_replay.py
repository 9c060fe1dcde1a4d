"""``ecoserve replay``: JSON records, files and plots, the paper suite, the report maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ecoserve.cli import main
from ecoserve.replay.report import convergence, fill_ratio_dvfs, make_record
from ecoserve.replay.suite import PAPER_TUNERS, PAPER_WORKLOADS, loop, suite
from traces import load_trace

FIELDS = {
    "workload",
    "tuner",
    "seed",
    "mean_cost",
    "p95_cost",
    "p99_cost",
    "energy_per_request_j",
    "latency_p50_s",
    "latency_p95_s",
    "latency_p99_s",
    "windows_to_converge",
    "ratio_static_oracle",
    "ratio_dynamic_oracle",
    "ratio_dvfs",
}


def test_replay_json_files_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "replay",
            "--trace",
            "bursty:10@500ms",
            "--duration",
            "4m",
            "--tuners",
            "ecogd,linear,dvfs",
            "--seeds",
            "2",
            "--window-requests",
            "100",
            "--warmup-requests",
            "20",
            "--workers",
            "1",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    results = doc["results"]
    # the all-maximum reference row, then 3 tuners x 2 seeds
    assert [r["tuner"] for r in results][:1] == ["all-max"] and len(results) == 1 + 3 * 2
    reference = results[0]
    assert reference["run_cost"] == 1.0
    for r in results[1:]:
        # every request counted: the static oracle's run bounds it, and the dynamic one's
        # run cost is never above the static one's
        assert r["run_cost"] > 0 and r["ratio_run_static_oracle"] > 0.9
        assert r["dynamic_oracle_run_cost"] <= r["static_oracle_run_cost"]
    for r in results:
        assert FIELDS <= set(r)
        assert r["workload"] == "bursty:10@500ms"
        assert r["mean_cost"] > 0 and r["ratio_static_oracle"] > 0.9
        assert r["latency_p50_s"] <= r["latency_p95_s"] <= r["latency_p99_s"]
    dvfs = [r for r in results if r["tuner"] == "dvfs"]
    assert all(r["ratio_dvfs"] == pytest.approx(1.0) for r in dvfs)
    for name in ("results.json", "results.csv", "summary.csv", "windows.csv"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["cost_bursty_10_500ms.png", "energy_latency_bursty_10_500ms.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_replay_table_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replay", "--trace", "fixed:90ms", "--duration", "2m", "--tuners", "fixed"]
    assert main([*args, "--workers", "1", "--window-requests", "50"]) == 0
    text = capsys.readouterr().out
    assert "win. cost" in text and "J/req" in text and "fixed:90ms" in text
    assert "all-max" in text
    assert main(["replay", "--trace", "nonsense", "--tuners", "ecogd"]) == 2
    assert main(["replay", "--trace", "fixed:90ms", "--tuners", "nope"]) == 2


def test_paper_suite_definition() -> None:
    workloads = suite("paper")
    assert workloads is PAPER_WORKLOADS
    assert [w.trace for w in workloads] == [
        "fixed:50ms",
        "fixed:90ms",
        "bursty:10@500ms",
        "bursty:10@900ms",
        "azure-code",
        "azure-conv",
    ]
    assert set(PAPER_TUNERS) == {"ecogd", "grid", "linear", "dvfs", "bayes", "mab"}
    for w in workloads:
        trace = w.load()
        assert trace.duration == pytest.approx(3600, rel=1e-6)
        if w.kind == "real":
            assert 11 <= trace.mean_rate <= 20  # rescaled to edge-camera rates
    with pytest.raises(ValueError, match="paper"):
        suite("nope")


def test_loop_repeats_the_pattern() -> None:
    trace = load_trace("bursty:3@1s", duration="10s")
    looped = loop(trace, 25.0)
    assert looped.duration == 25.0
    assert len(looped) == 3 * 25
    np.testing.assert_allclose(looped.arrivals[30:60] - 10.0, trace.arrivals)


def test_convergence_and_records() -> None:
    costs = [2.0, 1.5, 1.3, 1.0, 1.0, 1.01, 1.02, 1.0, 0.99, 1.0]
    w, during = convergence(costs, target=1.0)
    assert w == 3 and during == pytest.approx(np.mean(costs[:3]))
    assert convergence([2.0] * 10, 1.0)[0] is None
    rec = make_record(
        workload="w",
        tuner="ecogd",
        seed=0,
        mode="sim",
        device="d",
        accounting="active",
        alpha=0.5,
        costs=np.array(costs),
        latencies=np.linspace(0.01, 0.1, 100),
        energy_j=10.0,
        requests=100,
        rejected=0,
        static_cost=1.0,
        dynamic_cost=0.9,
    )
    assert rec.energy_per_request_j == pytest.approx(0.1)
    assert rec.ratio_dynamic_oracle == pytest.approx(rec.mean_cost / 0.9)
    other = make_record(
        **{
            k: getattr(rec, k)
            for k in ("workload", "seed", "mode", "device", "accounting", "alpha")
        },
        tuner="dvfs",
        costs=np.array(costs) * 2,
        latencies=np.linspace(0.01, 0.1, 100),
        energy_j=10.0,
        requests=100,
        rejected=0,
        static_cost=1.0,
        dynamic_cost=0.9,
    )
    fill_ratio_dvfs([rec, other])
    assert rec.ratio_dvfs == pytest.approx(0.5)
    assert not math.isnan(other.ratio_dvfs)


def _stub_app() -> object:
    """A daemon stand-in: answers /v1/infer and reports one window per 20 requests."""
    from fastapi import FastAPI

    app = FastAPI()
    served: list[int] = []

    @app.post("/v1/infer")
    async def infer(body: dict) -> dict:  # type: ignore[type-arg]
        served.append(1)
        return {"output": [0.0 for _ in body["input"]]}

    @app.get("/v1/status")
    async def status(windows: int = 20) -> dict:  # type: ignore[type-arg]
        n = len(served) // 20
        reports = [
            {
                "index": i,
                "phase": "baseline" if i == 0 else "tuning",
                "cost": 1.0 if i == 0 else 0.8,
                "requests": 20,
                "energy_j": 2.0,
                "energy_per_request_j": 0.1,
                "latency_mean_s": 0.01,
                "start": float(i),
                "end": float(i + 1),
                "accounting": "active",
                "values": {"batch_size": 4.0},
            }
            for i in range(n)
        ]
        return {
            "windows_closed": n,
            "windows": reports[-windows:] if windows else [],
            "tuner": {"name": "ecogd"},
        }

    return app


def test_real_mode_against_a_stub_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(_stub_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        code = main(
            [
                "replay",
                "--mode",
                "real",
                "--url",
                f"http://127.0.0.1:{port}",
                "--trace",
                "fixed:20ms",
                "--duration",
                "2s",
                "--input-shape",
                "4",
                "--out",
                str(tmp_path),
                "--no-plots",
                "--json",
            ]
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert code == 0
    captured = capsys.readouterr()
    assert "sending (answers 200: 100)" in captured.err  # live feedback, with the time left
    rec = json.loads(captured.out)["results"][0]
    assert FIELDS <= set(rec)
    assert rec["mode"] == "real" and rec["tuner"] == "ecogd"
    assert rec["served"] == rec["requests"] == 100
    assert rec["windows"] == 4 and rec["mean_cost"] == pytest.approx(0.8)
    assert rec["energy_per_request_j"] == pytest.approx(0.1)
    assert 0 < rec["latency_p50_s"] < 1.0
    assert (tmp_path / "results.json").exists()


def test_a_plan_reuses_given_oracles_and_skips_computing_them() -> None:
    from ecoserve.replay.runner import ReplayPlan, run_plan
    from ecoserve.replay.suite import Workload

    plan = ReplayPlan(
        workloads=(Workload("fixed:50ms 2min", "fixed:50ms", "fixed", duration="2min"),),
        tuners=("ecogd",),
        seeds=(0,),
    )
    steps: list[str] = []
    first = run_plan(plan, progress=lambda what, done, total: steps.append(what))
    assert steps[0].startswith("oracle ")
    steps.clear()
    again = run_plan(
        plan, progress=lambda what, done, total: steps.append(what), oracles=first.oracles
    )
    assert not any(s.startswith("oracle ") for s in steps)
    assert again.records[0].mean_cost == first.records[0].mean_cost
    assert again.records[0].ratio_static_oracle == first.records[0].ratio_static_oracle


def test_the_default_table_fits_100_columns_and_says_where_the_rest_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["replay", "--trace", "bursty:10@500ms", "--duration", "2m", "--tuners", "ecogd"]
    assert main([*args, "--workers", "1", "--window-requests", "50"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "J/req" in text and "after/static" not in text
    assert "more columns: --wide, --json" in text
    assert main([*args, "--workers", "1", "--window-requests", "50", "--wide"]) == 0
    assert "after/static" in capsys.readouterr().out


def test_figures_without_matplotlib_are_named_up_front_and_the_rest_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    out = tmp_path / "out"
    args = ["replay", "--trace", "step:8,24@10m", "--duration", "2m", "--tuners", "fixed"]
    assert main([*args, "--workers", "1", "--window-requests", "50", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())  # as wrapped to the terminal
    assert "pip install 'ecoserve[plots]'" in err
    assert err.index("ecoserve[plots]") < err.index("replaying")  # up front
    assert "the rate never steps" in err  # the step would come after the trace ends
    assert "all-max" in captured.out  # the table still printed
    assert (out / "summary.csv").exists() and not list(out.glob("*.png"))
