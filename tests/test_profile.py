"""``ecoserve profile`` and the sweep behind it: grids, validation, resume, the table it writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devices.base import Device, DeviceError
from devices.boards import XAVIER_NX
from devices.discovery import open_sysfs_actuator
from devices.meters import open_meter
from devices.safety import guarded
from devices.sysfs import SysfsRoot
from devices.testing import FakeKernel, x86_tree, xavier_nx_tree
from ecoserve import profiling as profiler
from ecoserve.cli import main
from ecoserve.core.knobs import CPU, GPU, Knob
from ecoserve.profiling import ProfileError, Setting
from ecoserve.runtime.device_spec import open_device
from twins.profile_table import TableTwin, read_profile_table

#: Options that keep a CLI sweep to a fraction of a second.
FAST = ["--repeats", "2", "--warmup-batches", "1", "--min-seconds", "0", "--idle-seconds", "0.05"]
FAST += ["--startup-seconds", "0"]

STATE_FILES = ("scaling_governor", "scaling_min_freq", "scaling_max_freq")
STATE_FILES += ("governor", "min_freq", "max_freq")


def clock_state(root: Path) -> dict[str, str]:
    """Every clock setting a restore must put back (kernel-derived ``cur`` files excluded)."""
    return {
        str(p.relative_to(root)): p.read_text().strip()
        for p in sorted(root.rglob("*"))
        if p.name in STATE_FILES and p.is_file() and not p.is_symlink()
    }


def profile(*args: str) -> int:
    return main(["profile", *args])


# -- grids and configuration files -------------------------------------------------------


def test_parse_grid_continues_lists_and_rejects_nonsense():
    grid = profiler.parse_grid("cpu=4, gpu=all,batch=1,2,4,8,16")
    assert grid == {"cpu": ["4"], "gpu": ["all"], "batch": ["1", "2", "4", "8", "16"]}
    for bad in ("mem=3", "4,cpu=2", "cpu=", "cpu=2,cpu=3"):
        with pytest.raises(ProfileError):
            profiler.parse_grid(bad)


def test_strided_keeps_both_ends_and_one_means_the_maximum():
    values = tuple(float(v) for v in range(10))
    assert profiler.strided(values, 4) == [0.0, 3.0, 6.0, 9.0]
    assert profiler.strided(values, 1) == [9.0]
    assert profiler.strided(values, 50) == list(values)


def test_grid_settings_over_device_knobs():
    knobs = {CPU: Knob(CPU, (1e8, 2e8, 3e8)), GPU: Knob(GPU, (5e8, 6e8))}
    settings = profiler.grid_settings(knobs, profiler.parse_grid("cpu=2,batch=2,1,2"))
    # GPU not named: held at its maximum; batch sizes deduplicated and sorted.
    assert [s.key for s in settings] == [
        (1e8, 6e8, 1),
        (1e8, 6e8, 2),
        (3e8, 6e8, 1),
        (3e8, 6e8, 2),
    ]
    no_gpu = profiler.grid_settings({CPU: knobs[CPU]}, profiler.parse_grid("cpu=1,gpu=3"))
    assert [s.key for s in no_gpu] == [(3e8, None, 1)]


def test_configs_csv_and_json(tmp_path):
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("# chosen by hand\ncpu_freq_hz,gpu_freq_hz,batch_size\n115200000,,4\n")
    assert profiler.read_configs(csv_path) == [Setting(115200000.0, None, 4)]
    json_path = tmp_path / "c.json"
    json_path.write_text(json.dumps([{"gpu_freq_hz": 204000000, "batch_size": 2}]))
    assert profiler.read_configs(json_path) == [Setting(None, 204000000.0, 2)]
    (tmp_path / "bad.csv").write_text("cpu_freq_hz,batch_size\nfast,2\n")
    with pytest.raises(ProfileError, match="line 2"):
        profiler.read_configs(tmp_path / "bad.csv")


def test_check_settings_fills_missing_knobs_with_max_and_refuses_off_table():
    knobs = {CPU: Knob(CPU, (1e8, 2e8))}
    assert profiler.check_settings([Setting(None, None, 1)], knobs) == [Setting(2e8, None, 1)]
    with pytest.raises(ProfileError, match=r"not a CPU operating point.*100, 200"):
        profiler.check_settings([Setting(1.5e8, None, 1)], knobs)
    with pytest.raises(ProfileError, match="no GPU frequency knob"):
        profiler.check_settings([Setting(None, 3e8, 1)], knobs)


# -- the CLI, end to end -------------------------------------------------------------------


def test_virtual_profile_loads_as_table_twin(tmp_path, capsys):
    out = tmp_path / "nx.csv"
    rc = profile(
        "--model", "builtin:cnn", "--device", "virtual:xavier-nx",
        "--grid", "cpu=2,gpu=1,batch=1,2", *FAST, "--startup-seconds", "0.3", "--out", str(out),
    )  # fmt: skip
    assert rc == 0
    assert "4 rows (4 measured now)" in capsys.readouterr().out
    table = read_profile_table(out)
    meta = table.metadata
    assert meta["board"] == "xavier-nx" and meta["model"] == "builtin:cnn"
    assert float(meta["idle_power_w"]) > 0 and meta["date"]
    assert meta["meter_estimated"] == "true"
    twin = TableTwin(table)
    knobs = {k.name: k.values for k in twin.knobs()}
    cpu, gpu = XAVIER_NX.cpu_freqs_hz, XAVIER_NX.gpu_freqs_hz
    assert knobs == {CPU: (cpu[0], cpu[-1]), GPU: (gpu[-1],)}
    assert all(r.n_samples == 2 and r.power_w > 0 for r in table.rows)
    # The twin answers from the measurements (timings themselves vary with machine load).
    assert twin.batch_time(2, {CPU: cpu[0], GPU: gpu[-1]}) > 0
    assert twin.power({CPU: cpu[0], GPU: gpu[-1]}, 1.0, batch=2) > 0


def test_sysfs_profile_on_fake_xavier_nx_measures_the_ina3221_and_restores(tmp_path, capsys):
    tree = xavier_nx_tree(tmp_path / "tree")
    before = clock_state(tree)
    out = tmp_path / "nx.csv"
    rc = profile(
        "--model", "builtin:noop", "--device", "sysfs", "--sysfs-root", str(tree),
        "--grid", "cpu=2,gpu=1,batch=1,2", *FAST, "--min-seconds", "0.05", "--out", str(out),
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    table = read_profile_table(out)
    assert table.metadata["board"] == "xavier-nx"
    assert table.metadata["meter"] == "ina3221:VDD_IN"
    # The fake VDD_IN rail draws 5.080 V x 1.350 A, idle or not.
    assert float(table.metadata["idle_power_w"]) == pytest.approx(6.858, rel=0.02)
    assert all(r.power_w == pytest.approx(6.858, rel=0.02) for r in table.rows)
    assert {r.cpu_freq_hz for r in table.rows} == {115200000.0, 1907200000.0}
    assert {r.gpu_freq_hz for r in table.rows} == {1109250000.0}
    TableTwin(table)
    assert clock_state(tree) == before


def test_resume_skips_rows_already_measured(tmp_path, capsys):
    out = tmp_path / "t.csv"
    common = ["--model", "builtin:noop", "--device", "virtual:nano", *FAST, "--out", str(out)]
    assert profile(*common, "--grid", "cpu=2,gpu=1,batch=1") == 0
    first = read_profile_table(out)
    capsys.readouterr()
    assert profile(*common, "--grid", "cpu=2,gpu=1,batch=1,2") == 0
    assert "4 rows (2 measured now, 2 already there)" in capsys.readouterr().out
    second = read_profile_table(out)
    assert second.rows[:2] == first.rows
    assert second.metadata["date"] == first.metadata["date"]
    assert second.metadata["idle_power_w"] == first.metadata["idle_power_w"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_refuses_a_table_of_another_model(tmp_path, capsys):
    out = tmp_path / "t.csv"
    common = ["--device", "virtual:nano", "--grid", "cpu=1,gpu=1,batch=1", *FAST, "--out", str(out)]
    assert profile("--model", "builtin:noop", *common) == 0
    assert profile("--model", "builtin:cnn", *common) == 2
    assert "holds a profile of model 'builtin:noop'" in capsys.readouterr().err


def test_configs_with_off_table_frequency_is_a_cli_error_and_touches_nothing(tmp_path, capsys):
    tree = xavier_nx_tree(tmp_path / "tree")
    before = clock_state(tree)
    configs = tmp_path / "c.csv"
    configs.write_text("cpu_freq_hz,gpu_freq_hz,batch_size\n1000000000,,2\n")
    out = tmp_path / "t.csv"
    rc = profile(
        "--device", "sysfs", "--sysfs-root", str(tree), "--configs", str(configs),
        *FAST, "--out", str(out),
    )  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "1000000000 Hz is not a CPU operating point" in err and "1907.2" in err
    assert not out.exists()
    assert clock_state(tree) == before


def test_configs_file_profiles_exactly_those_settings(tmp_path, capsys):
    configs = tmp_path / "c.json"
    cpu, gpu = XAVIER_NX.cpu_freqs_hz, XAVIER_NX.gpu_freqs_hz
    configs.write_text(
        json.dumps(
            [
                {"cpu_freq_hz": cpu[3], "gpu_freq_hz": gpu[2], "batch_size": 1},
                {"cpu_freq_hz": cpu[5], "batch_size": 4},
            ]
        )
    )
    out = tmp_path / "t.csv"
    rc = profile(
        "--model", "builtin:noop", "--device", "virtual:xavier-nx", "--configs", str(configs),
        *FAST, "--out", str(out),
    )  # fmt: skip
    assert rc == 0
    keys = [profiler.row_key(r) for r in read_profile_table(out).rows]
    assert keys == [(cpu[3], gpu[2], 1), (cpu[5], gpu[-1], 4)]


def test_bad_usage_exits_2(tmp_path, capsys):
    out = str(tmp_path / "t.csv")
    assert profile("--device", "virtual:nano", "--grid", "cpu=x", "--out", out) == 2
    assert profile("--device", "virtual:atari", "--out", out) == 2
    assert profile("--device", "virtual:nano", "--model", "builtin:nope", "--out", out) == 2
    err = capsys.readouterr().err
    assert "whole numbers" in err and "unknown virtual board" in err and "built-in model" in err


def test_a_meter_that_never_moves_fails_clearly_and_restores(tmp_path, capsys):
    # The fake RAPL counter is a constant: no energy can be measured.
    tree = x86_tree(tmp_path / "tree")
    before = clock_state(tree)
    out = tmp_path / "t.csv"
    rc = profile(
        "--model", "builtin:noop", "--device", "sysfs", "--sysfs-root", str(tree),
        "--grid", "cpu=2,batch=1", *FAST, "--out", str(out),
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "reported no energy" in err and "No row was written" in err
    assert clock_state(tree) == before


# -- the sweep, under faults -------------------------------------------------------------


def nx_device(tree: Path, kernel: FakeKernel | None = None) -> Device:
    root = SysfsRoot(tree, hook=kernel or FakeKernel())
    return Device("sysfs", open_sysfs_actuator(root), open_meter("auto", tree))


def test_a_knob_lost_to_permissions_aborts_the_row_instead_of_mislabelling_it(tmp_path):
    tree = xavier_nx_tree(tmp_path)
    device = nx_device(tree, FakeKernel().deny("sys/class/devfreq/*/min_freq"))
    setting = Setting(XAVIER_NX.cpu_freqs_hz[0], XAVIER_NX.gpu_freqs_hz[0], 1)
    try:
        with pytest.raises(DeviceError, match=r"cannot pin gpu_freq_hz.*permission"):
            profiler.measure(device, lambda x: x, [0], setting, warmup=0, repeats=1)
    finally:
        device.close()


def test_interrupted_sweep_keeps_finished_rows_and_restores(tmp_path):
    tree = xavier_nx_tree(tmp_path / "tree")
    before = clock_state(tree)
    device = nx_device(tree)
    calls = []

    def fn(batch):
        calls.append(1)
        if len(calls) > 7:  # one warm-up call, then two rows of three
            raise KeyboardInterrupt
        return batch

    knobs = {k.name: k for k in device.actuator.knobs()}
    settings = profiler.grid_settings(knobs, profiler.parse_grid("cpu=3,gpu=1,batch=1"))
    writer = profiler.TableWriter(tmp_path / "t.csv", {"board": "xavier-nx", "idle_power_w": 1})
    try:
        with pytest.raises(KeyboardInterrupt), guarded(device):
            profiler.sweep(device, fn, [0], settings, writer, warmup=0, repeats=3)
    finally:
        device.close()
    kept = read_profile_table(tmp_path / "t.csv")
    assert len(kept.rows) == 2 and kept.rows == tuple(writer.rows)
    assert clock_state(tree) == before


def test_watchdog_firing_mid_measurement_invalidates_the_row(tmp_path):
    tree = xavier_nx_tree(tmp_path / "tree")
    before = clock_state(tree)
    device = nx_device(tree)
    setting = Setting(XAVIER_NX.cpu_freqs_hz[0], None, 1)
    try:
        with guarded(device, watchdog_timeout_s=0.05) as guard:
            with pytest.raises(DeviceError, match="watchdog handed the clocks back"):
                profiler.measure(
                    device,
                    lambda x: time.sleep(0.2),
                    [0],
                    setting,
                    warmup=0,
                    repeats=1,
                    guard=guard,
                )
            assert guard.fired_count >= 1
            # It handed the clocks back while the process was still running.
            assert clock_state(tree) == before
    finally:
        device.close()


def test_open_device_virtual_still_profiles_through_the_library(tmp_path):
    device = open_device("virtual:orin")
    try:
        knobs = {k.name: k for k in device.actuator.knobs()}
        settings = profiler.grid_settings(knobs, profiler.parse_grid("cpu=1,gpu=1,batch=1,2"))
        writer = profiler.TableWriter(tmp_path / "t.csv", {"board": "orin", "idle_power_w": 3})
        rows = profiler.sweep(device, lambda x: x, [0], settings, writer, warmup=0, repeats=2)
    finally:
        device.close()
    assert len(rows) == 2
    assert TableTwin.from_path(tmp_path / "t.csv").knobs()
