"""The fitted device twin against the measured data, its sanity, and the profile table."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from devices.boards import XAVIER_NX
from ecoserve.core.knobs import CPU, GPU
from twins.fitted import (
    FittedTwin,
    active_power,
    coefficients_path,
    load_coefficients,
    load_twin,
    time_parts,
)
from twins.profile_table import (
    ProfileRow,
    ProfileTableError,
    TableTwin,
    read_profile_table,
    table_from_twin,
    write_profile_table,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETTINGS = coefficients_path().with_name("jetson_mobilenet_settings.csv")
BOARDS = ("xavier-nx", "agx-xavier", "nano", "orin")


def settings(board: str) -> list[dict[str, float]]:
    """The bundled per-setting means of one board."""
    with SETTINGS.open(newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return [
        {k: float(v) for k, v in row.items() if k not in ("board", "source")}
        for row in csv.DictReader(lines)
        if row["board"] == board
    ]


def mape(model: np.ndarray, measured: np.ndarray) -> float:
    return float(100 * np.mean(np.abs(model / measured - 1)))


# --- against the measurements ------------------------------------------------------------


@pytest.mark.parametrize("board", ["agx-xavier", "nano", "orin"])
def test_reproduces_the_per_setting_means_within_reported_error(board: str) -> None:
    twin = load_twin(board, noise=0.0)
    assert isinstance(twin, FittedTwin)
    rows = settings(board)
    assert rows, f"no bundled measurements for {board}"
    t_model, e_model = [], []
    for r in rows:
        freqs = {CPU: r["cpu_freq_hz"], GPU: r["gpu_freq_hz"]}
        b = int(r["batch_size"])
        t_model.append(twin.batch_time(b, freqs))
        e_model.append(twin.batch_energy(b, freqs) / b)
    t_err = mape(np.array(t_model), np.array([r["batch_time_s"] for r in rows]))
    e_err = mape(np.array(e_model), np.array([r["energy_per_item_j"] for r in rows]))
    reported = load_coefficients()["boards"][board]["fit_error"]["settings"]
    assert reported["points"] == len(rows)
    assert t_err == pytest.approx(reported["batch_time_mape_pct"], abs=0.06)
    assert e_err == pytest.approx(reported["energy_mape_pct"], abs=0.06)
    assert t_err < 6.0 and e_err < 6.0


@pytest.mark.skipif(not (SHARED / "jetson").is_dir(), reason="../shared/data not beside the repo")
def test_fit_reproduces_the_committed_coefficients() -> None:
    from twins import fitting as fit

    document, settings_text = fit.fit_all(SHARED)
    committed = load_coefficients()
    assert settings_text == SETTINGS.read_text(encoding="utf-8")  # plain averages: exact
    assert set(document["boards"]) == set(committed["boards"])
    for board, entry in document["boards"].items():
        # Least squares may move the last digits between SciPy builds; nothing more.
        fresh, stored = entry["params"], committed["boards"][board]["params"]
        for name, value in stored.items():
            assert fresh[name] == pytest.approx(value, rel=1e-3, abs=1e-6), (board, name)
    # Every measured window, straight from the shared data, within the reported error.
    windows = fit.read_windows(SHARED)
    for board in ("agx-xavier", "nano"):
        twin = load_twin(board)
        assert isinstance(twin, FittedTwin)
        w = windows[board]
        t = time_parts(twin.params, w.batch, w.cpu_hz, w.gpu_hz)[2]
        e = active_power(twin.params, w.batch, w.cpu_hz, w.gpu_hz) * t / w.batch
        reported = committed["boards"][board]["fit_error"]["windows"]
        assert mape(t, w.time_s) == pytest.approx(reported["batch_time_mape_pct"], abs=0.06)
        assert mape(e, w.energy_j) == pytest.approx(reported["energy_mape_pct"], abs=0.06)


def test_coefficients_carry_their_sources() -> None:
    doc = load_coefficients()
    commits = {s["commit"] for s in doc["sources"]}
    assert "2b4408066d65e2fd39921097f0a15ffc27d08040" in commits
    assert set(BOARDS) <= set(doc["boards"])
    assert "derived" in doc["boards"]["xavier-nx"]["basis"]
    assert "not measured" in doc["assumptions"]["cpu_frequency"]


# --- sanity over the whole search space ---------------------------------------------------


@pytest.mark.parametrize("board", BOARDS)
def test_monotonic_in_the_knobs(board: str) -> None:
    twin = load_twin(board, noise=0.0)
    knobs = {k.name: k.values for k in twin.knobs()}
    cpus, gpus = knobs[CPU], knobs[GPU]
    batches = range(1, 17)
    t = np.array(
        [[[twin.batch_time(b, {CPU: c, GPU: g}) for b in batches] for g in gpus] for c in cpus]
    )
    p = np.array(
        [
            [[twin.power({CPU: c, GPU: g}, 1.0, batch=b) for b in batches] for g in gpus]
            for c in cpus
        ]
    )
    assert np.all(np.diff(t, axis=1) < 0), "time must fall as the GPU clock rises"
    assert np.all(np.diff(t, axis=0) < 0), "time must fall as the CPU clock rises"
    assert np.all(np.diff(t, axis=2) > 0), "a bigger batch takes longer"
    assert np.all(np.diff(t / np.arange(1, 17), axis=2) <= 1e-12), "per-item time never grows"
    assert np.all(np.diff(p, axis=1) > 0), "power must rise with the GPU clock"
    assert np.all(np.diff(p, axis=0) > 0), "power must rise with the CPU clock"
    idle = twin.power(twin.max_freqs(), 0.0)
    assert 0 < idle < p.min()


def test_xavier_nx_is_the_papers_search_space() -> None:
    twin = load_twin("xavier-nx")
    knobs = {k.name: k for k in twin.knobs()}
    assert knobs[CPU].size == 25 and knobs[GPU].size == 15
    assert knobs[GPU].values[-1] == XAVIER_NX.gpu_freqs_hz[-1]
    assert isinstance(twin, FittedTwin) and twin.max_batch == 16
    # Fewer GPU cores at lower clocks than the AGX it is derived from: slower at the top.
    agx = load_twin("agx-xavier")
    assert twin.batch_time(8, twin.max_freqs()) > agx.batch_time(8, agx.max_freqs())


def test_busy_interpolates_between_idle_and_active() -> None:
    twin = load_twin("agx-xavier")
    f = twin.max_freqs()
    idle, full = twin.power(f, 0.0), twin.power(f, 1.0)
    assert twin.power(f, 0.5) == pytest.approx((idle + full) / 2)
    assert twin.power(f, 1.0, batch=32) > twin.power(f, 1.0, batch=1)
    with pytest.raises(ValueError):
        twin.power(f, 1.5)


def test_noise_defaults_to_the_fit_residuals_and_can_be_overridden() -> None:
    twin = load_twin("nano")
    assert isinstance(twin, FittedTwin)
    assert 0 < twin.noise < 0.1 and 0 < twin.power_noise < 0.1
    rng = random.Random(1)
    f = twin.max_freqs()
    samples = [twin.sample_batch_time(4, f, rng) for _ in range(2000)]
    assert np.std(samples) / twin.batch_time(4, f) == pytest.approx(twin.noise, rel=0.15)
    quiet = load_twin("nano", noise=0.0)
    assert quiet.sample_batch_time(4, f, rng) == quiet.batch_time(4, f)
    assert quiet.sample_power(f, 1.0, rng) == quiet.power(f, 1.0)


def test_unknown_twin_lists_the_boards() -> None:
    with pytest.raises(KeyError, match="agx-xavier"):
        load_twin("raspberry-pi")


# --- profile table -----------------------------------------------------------------------


def test_table_twin_round_trip(tmp_path: Path) -> None:
    twin = load_twin("xavier-nx", noise=0.0)
    table = table_from_twin(twin, range(1, 17), {"model": "mobilenet", "date": "2024-05-01"})
    path = tmp_path / "nx.csv"
    write_profile_table(path, table.rows, table.metadata)
    back = read_profile_table(path)
    assert back.rows == table.rows
    assert back.metadata["model"] == "mobilenet"
    loaded = load_twin(str(path))
    assert isinstance(loaded, TableTwin)
    assert [k.values for k in loaded.knobs()] == [k.values for k in twin.knobs()]
    for c in XAVIER_NX.cpu_freqs_hz[::6]:
        for g in XAVIER_NX.gpu_freqs_hz[::4]:
            f = {CPU: c, GPU: g}
            for b in (1, 7, 16):
                assert loaded.batch_time(b, f) == pytest.approx(twin.batch_time(b, f), rel=1e-12)
                assert loaded.power(f, 1.0, batch=b) == pytest.approx(
                    twin.power(f, 1.0, batch=b), rel=1e-12
                )
    assert loaded.power(twin.max_freqs(), 0.0) == pytest.approx(twin.power(twin.max_freqs(), 0.0))


def test_table_twin_interpolates_between_grid_points(tmp_path: Path) -> None:
    rows = [
        ProfileRow.measured(c, g, b, t, p)
        for c, g, b, t, p in [
            (1e9, 1e8, 1, 0.040, 10.0),
            (1e9, 1e8, 4, 0.100, 12.0),
            (1e9, 3e8, 1, 0.020, 14.0),
            (1e9, 3e8, 4, 0.050, 16.0),
            (2e9, 1e8, 1, 0.030, 12.0),
            (2e9, 1e8, 4, 0.090, 14.0),
            (2e9, 3e8, 1, 0.010, 16.0),
            (2e9, 3e8, 4, 0.040, 18.0),
        ]
    ]
    path = tmp_path / "grid.csv"
    write_profile_table(path, rows, {"board": "toy", "idle_power_w": 5})
    twin = TableTwin.from_path(path)
    mid = {CPU: 1.5e9, GPU: 2e8}
    assert twin.batch_time(1, mid) == pytest.approx(0.025)
    assert twin.batch_time(4, mid) == pytest.approx(0.070)
    assert twin.batch_time(2, mid) == pytest.approx(0.040)  # linear in batch
    assert twin.batch_time(7, mid) == pytest.approx(0.115)  # extrapolated
    assert twin.power(mid, 1.0, batch=2) == pytest.approx(13.0 + 2 / 3)
    assert twin.power(mid, 1.0, batch=16) == pytest.approx(15.0)  # held beyond the table
    assert twin.power(mid, 0.0) == 5.0


def test_profile_table_errors_name_the_line(tmp_path: Path) -> None:
    header = "cpu_freq_hz,gpu_freq_hz,batch_size,batch_time_s,power_w,energy_per_item_j,n_samples\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "# idle_power_w: 3\n" + header + "1e9,1e8,1,0.01,5,0.05,3\n1e9,1e8,2,abc,5,0.05,3\n"
    )
    with pytest.raises(
        ProfileTableError, match=r"bad\.csv line 4: batch_time_s: cannot parse 'abc'"
    ):
        read_profile_table(bad)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("cpu,gpu\n1,2\n")
    with pytest.raises(ProfileTableError, match="line 1: header must be"):
        read_profile_table(wrong)
    empty = tmp_path / "empty.csv"
    empty.write_text("# board: x\n")
    with pytest.raises(ProfileTableError, match="empty"):
        read_profile_table(empty)
    negative = tmp_path / "neg.csv"
    negative.write_text(header + "1e9,1e8,1,-0.01,5,0.05,3\n")
    with pytest.raises(ProfileTableError, match="line 2"):
        read_profile_table(negative)


def test_table_twin_needs_idle_power_and_a_full_grid(tmp_path: Path) -> None:
    rows = [ProfileRow.measured(1e9, g, 1, 0.01, 5.0) for g in (1e8, 2e8)]
    no_idle = tmp_path / "noidle.csv"
    write_profile_table(no_idle, rows, {"board": "x"})
    with pytest.raises(ProfileTableError, match="idle_power_w"):
        TableTwin.from_path(no_idle)
    holes = tmp_path / "holes.csv"
    write_profile_table(
        holes, rows + [ProfileRow.measured(2e9, 1e8, 1, 0.01, 5.0)], {"idle_power_w": 2}
    )
    with pytest.raises(ProfileTableError, match="not a full grid"):
        TableTwin.from_path(holes)


def test_table_without_a_cpu_knob(tmp_path: Path) -> None:
    rows = [
        ProfileRow.measured(None, g, b, 0.01 * b / (g / 1e8), 5.0)
        for g in (1e8, 2e8)
        for b in (1, 2)
    ]
    path = tmp_path / "gpuonly.csv"
    write_profile_table(path, rows, {"idle_power_w": 2})
    twin = TableTwin.from_path(path)
    assert [k.name for k in twin.knobs()] == [GPU]
    assert twin.batch_time(2, {GPU: 2e8}) == pytest.approx(0.01)
