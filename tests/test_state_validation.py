"""Files read at start are validated: a bad one is one warning naming it and a fresh start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ecoserve.core.assembly import EngineSettings, build_controller, build_space
from ecoserve.core.cost import Baseline
from ecoserve.core.knobs import Knob
from ecoserve.runtime.build import saved_baseline
from ecoserve.runtime.state_files import load_baseline, save_baseline

KNOBS = [Knob("cpu_freq_hz", (1e9, 2e9, 3e9)), Knob("gpu_freq_hz", (1e8, 5e8))]


def fresh():
    settings = EngineSettings(tuner="ecogd")
    return build_controller(build_space(KNOBS, settings), settings)


def good_state() -> dict:
    c = fresh()
    c.baseline = Baseline(0.02, 0.01)
    return c.state_dict()


def test_a_good_state_round_trips() -> None:
    c = fresh()
    restored, problems = c.load_state_dict(good_state())
    assert restored == ["baseline", "tuner"] and problems == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"tuner_state": "garbage"}, "tuner state not resumed"),
        ({"tuner_state": {"tuner": "ecogd"}}, "tuner state not resumed"),
        ({"baseline": {"energy_per_request_j": "x", "latency_s": 1}}, "bad baseline"),
        ({"baseline": {"energy_per_request_j": float("inf"), "latency_s": 1}}, "finite"),
        ({"baseline": {"energy_per_request_j": 1e-300, "latency_s": 0.01}}, "at least"),
        ({"baseline": [1, 2]}, "bad baseline"),
        ({"windows_closed": "many"}, "not a count"),
        ({"pinned": [1, 2]}, "not an object"),
        ({"pinned": {"cpu_freq_hz": 7}}, "does not fit"),
        ({"pinned": {"no_such_knob": 0}}, "does not fit"),
    ],
)
def test_each_bad_field_is_skipped_with_its_reason(change: dict, problem: str) -> None:
    c = fresh()
    restored, problems = c.load_state_dict({**good_state(), **change})
    assert any(problem in p for p in problems), problems
    assert c.space.contains(c.tuner.ask())  # the tuner still works on the space


def test_a_tuner_state_with_an_index_outside_the_space_starts_the_tuner_afresh() -> None:
    state = good_state()
    state["tuner_state"]["centre"] = [9, 9, 40]  # EcoGD's centre, outside every knob
    c = fresh()
    restored, problems = c.load_state_dict(state)
    assert "tuner" not in restored and any("not resumed" in p for p in problems)
    assert c.space.contains(c.tuner.ask())


def test_baseline_files_refuse_what_is_not_a_measurement(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    for bad in ('{"energy_per_request_j": Infinity, "latency_s": 0.01}', "", "garbage", "[]"):
        path.write_text(bad)
        with pytest.raises(ValueError, match=str(path)):
            load_baseline(path)
    path.write_text(json.dumps({"energy_per_request_j": 1e-300, "latency_s": 0.01}))
    with pytest.raises(ValueError, match="at least"):
        load_baseline(path)
    save_baseline(Baseline(0.03, 0.02), path)
    assert load_baseline(path) == Baseline(0.03, 0.02)


def test_an_unreadable_baseline_file_is_named_once_and_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "baseline.json"
    settings = EngineSettings(baseline_path=str(path))
    assert saved_baseline(settings) is None and not caplog.text  # none yet: no warning
    path.write_text("")
    with caplog.at_level(logging.WARNING):
        assert saved_baseline(settings) is None
    assert str(path) in caplog.text and "measuring a new baseline" in caplog.text


def test_a_state_file_of_the_wrong_types_starts_the_daemon_fresh(tmp_path: Path) -> None:
    from test_server_fixtures import FAST, daemon

    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "format": 1,
                "model": "builtin:cnn",
                "device": "virtual:xavier-nx",
                "accounting": "active",
                "tuner_state": ["not", "a", "state"],
                "baseline": {"energy_per_request_j": "NaN?", "latency_s": None},
                "windows_closed": -3,
                "pinned": "everything",
            }
        )
    )
    with daemon(*FAST, "--state-file", str(state)) as d:
        assert "not resumed" in d.output and str(state) in d.output
    saved = json.loads(state.read_text())  # rewritten, valid, at exit
    assert isinstance(saved["tuner_state"], dict) and saved["baseline"] is not None


def test_a_baseline_file_of_other_accounting_is_named_once_and_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "baseline.json"
    save_baseline(Baseline(0.03, 0.02, "total"), path)
    with caplog.at_level(logging.WARNING):
        assert saved_baseline(EngineSettings(baseline_path=str(path), accounting="active")) is None
    assert caplog.text.count("WARNING") == 1
    assert str(path) in caplog.text and "'total' accounting, not 'active'" in caplog.text
    caplog.clear()
    total = EngineSettings(baseline_path=str(path), accounting="total")
    assert saved_baseline(total) == Baseline(0.03, 0.02, "total") and not caplog.text


def test_an_oversized_state_file_is_refused_at_once_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ecoserve.core.assembly import build_engine
    from ecoserve.runtime import tuning_state

    engine = build_engine(KNOBS, EngineSettings(tuner="ecogd"), None)
    state = {"format": 1, "model": "m", "device": "d", **engine.state_dict()}
    path = tmp_path / "state.json"
    # a history far past what a tuner keeps, as a runaway writer would leave it
    state["tuner_state"]["history"] = [[[0, 0, 0], 1.0, 1, 8]] * 1_800_000
    path.write_text(json.dumps(state))
    assert path.stat().st_size > tuning_state.MAX_STATE_BYTES
    with caplog.at_level(logging.WARNING):
        assert tuning_state.resume(engine, path, "m", "d") == []
    assert caplog.text.count("WARNING") == 1
    assert str(path) in caplog.text and "starting fresh" in caplog.text
    # under the byte limit, a list past the entry limit is refused the same way
    state["tuner_state"]["history"] = [[0]] * (tuning_state.MAX_ENTRIES + 1)
    path.write_text(json.dumps(state, separators=(",", ":")))
    assert path.stat().st_size <= tuning_state.MAX_STATE_BYTES
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert tuning_state.resume(engine, path, "m", "d") == []
    assert "holds a list of 100001 entries" in caplog.text and str(path) in caplog.text
