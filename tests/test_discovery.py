"""``discover`` and ``open_sysfs_actuator`` on fake trees of each supported kind of box."""

from __future__ import annotations

import json

import pytest

from devices.boards import AGX_XAVIER, NANO, ORIN, XAVIER_NX
from devices.discovery import MeterInfo, discover, guess_board, open_sysfs_actuator
from devices.sysfs import SysfsRoot
from devices.testing import FakeKernel, nano_tree, orin_tree, x86_tree, xavier_nx_tree
from ecoserve.core.knobs import CPU, GPU

BOARDS = [
    pytest.param(
        xavier_nx_tree,
        "xavier-nx",
        XAVIER_NX.cpu_freqs_hz,
        XAVIER_NX.gpu_freqs_hz,
        "interactive schedutil userspace performance",
        "policies 0,2,4",
        id="xavier-nx",
    ),
    pytest.param(
        nano_tree,
        "nano",
        NANO.cpu_freqs_hz,
        NANO.gpu_freqs_hz,
        "interactive conservative ondemand userspace powersave performance schedutil",
        "policies 0,",
        id="nano",
    ),
    pytest.param(
        orin_tree,
        "orin",
        ORIN.cpu_freqs_hz,
        ORIN.gpu_freqs_hz,
        "userspace ondemand performance schedutil",
        "policies 0,4,8",
        id="orin",
    ),
]


@pytest.mark.parametrize(("build", "board", "cpu_hz", "gpu_hz", "governors", "policies"), BOARDS)
def test_jetson_boards_are_recognised(tmp_path, build, board, cpu_hz, gpu_hz, governors, policies):
    build(tmp_path)
    report = discover(SysfsRoot(tmp_path))
    assert report.board == board
    cpu, gpu = report.knob(CPU), report.knob(GPU)
    assert cpu is not None and gpu is not None
    assert cpu.values_hz == cpu_hz and cpu.value_kind == "table"
    assert cpu.governors == tuple(governors.split()) and cpu.governor == "schedutil"
    assert cpu.pin_method == "userspace+scaling_setspeed"
    assert cpu.detail.startswith(policies)
    assert gpu.values_hz == gpu_hz
    assert gpu.governor == "nvhost_podgov" and "nvhost_podgov" in gpu.governors
    assert gpu.pin_method == "min_freq=max_freq"
    assert cpu.writable and gpu.writable and not cpu.reason and not gpu.reason


def test_xavier_nx_reports_the_power_mode_limits_and_gpu_path(tmp_path):
    xavier_nx_tree(tmp_path)
    report = discover(tmp_path)
    cpu, gpu = report.knob(CPU), report.knob(GPU)
    assert (cpu.min_hz, cpu.max_hz) == (1190400000, 1420800000)
    assert gpu.path == str(tmp_path / "sys/class/devfreq/17000000.gv11b")
    assert gpu.detail == "of_node gv11b"
    assert "gv11b" in report.board_reason


@pytest.mark.parametrize("userspace", [True, False], ids=["acpi-cpufreq", "intel_pstate"])
def test_x86_is_generic_with_no_gpu(tmp_path, userspace):
    x86_tree(tmp_path, userspace=userspace)
    report = discover(SysfsRoot(tmp_path))
    assert report.board == "generic"
    cpu, gpu = report.knob(CPU), report.knob(GPU)
    assert cpu.writable
    if userspace:
        assert cpu.value_kind == "table" and cpu.pin_method == "userspace+scaling_setspeed"
        assert cpu.values_hz[-1] == 3401000000
    else:
        assert cpu.value_kind == "range" and cpu.pin_method == "scaling_min=max"
        assert cpu.governors == ("performance", "powersave") and len(cpu.values_hz) == 16
    assert not gpu.writable and gpu.reason.startswith("absent:") and gpu.values_hz == ()


def test_unwritable_knob_is_reported_with_the_fix(tmp_path):
    xavier_nx_tree(tmp_path)
    kernel = FakeKernel().deny("sys/class/devfreq/*/min_freq")
    report = discover(SysfsRoot(tmp_path, hook=kernel))
    gpu = report.knob(GPU)
    assert not gpu.writable
    assert gpu.reason.startswith("permission:") and "min_freq" in gpu.reason
    assert "udev" in gpu.reason
    assert report.knob(CPU).writable
    assert "no — permission" in report.render_text()
    assert kernel.writes == []  # discovery never writes


def test_offline_policies_are_noted(tmp_path):
    xavier_nx_tree(tmp_path)
    kernel = FakeKernel().fail_reads("sys/devices/system/cpu/cpufreq/policy4/*")
    cpu = discover(SysfsRoot(tmp_path, hook=kernel)).knob(CPU)
    assert cpu.writable and cpu.detail.startswith("policies 0,2,")
    assert "policy4 not controlled" in cpu.detail


def test_empty_tree_is_generic_with_both_knobs_absent(tmp_path):
    report = discover(tmp_path)
    assert report.board == "generic"
    assert [k.reason.split(":")[0] for k in report.knobs] == ["absent", "absent"]
    act = open_sysfs_actuator(SysfsRoot(tmp_path))
    assert act.knobs() == []
    assert len(act.warnings()) == 2 and "CPU frequency knob unavailable" in act.warnings()[0]
    act.apply({CPU: 1e9, GPU: 1e9})
    act.restore()


def test_open_sysfs_actuator_skips_the_absent_gpu(tmp_path):
    x86_tree(tmp_path)
    act = open_sysfs_actuator(tmp_path)
    assert [k.name for k in act.knobs()] == [CPU]
    assert act.warnings() == [w for w in act.warnings() if w.startswith("GPU frequency knob")]


def test_meter_probes_fill_the_report_and_a_broken_probe_is_contained(tmp_path):
    nano_tree(tmp_path)

    def ina_probe(root: SysfsRoot) -> list[MeterInfo]:
        paths = root.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*")
        return [MeterInfo("POM_5V_IN", "ina3221-iio", root.show(p), True) for p in paths]

    def broken_probe(root: SysfsRoot) -> list[MeterInfo]:
        raise OSError("i2c bus gone")

    report = discover(tmp_path, meter_probes=[ina_probe, broken_probe])
    assert [m.kind for m in report.meters] == ["ina3221-iio", "error"]
    assert report.meters[0].path.endswith("6-0040/iio:device0")
    assert "i2c bus gone" in report.meters[1].reason and not report.meters[1].readable


def test_report_serialises_to_json_and_text(tmp_path):
    orin_tree(tmp_path)
    report = discover(
        tmp_path, meter_probes=[lambda r: [MeterInfo("est", "estimate", "", True, estimated=True)]]
    )
    data = json.loads(report.to_json())
    assert data["board"] == "orin"
    assert [k["name"] for k in data["knobs"]] == [CPU, GPU]
    assert data["knobs"][1]["values_hz"][0] == 306000000
    assert data["meters"][0]["estimated"] is True
    text = report.render_text()
    for expected in (
        "board  orin",
        CPU,
        GPU,
        "306-1300.5 MHz",
        "nvhost_podgov",
        "writable  yes",
        "estimated",
    ):
        assert expected in text


def test_board_guess_tells_close_profiles_apart():
    assert (
        guess_board(AGX_XAVIER.cpu_freqs_hz, AGX_XAVIER.gpu_freqs_hz, ["gv11b"])[0] == "agx-xavier"
    )
    assert guess_board(XAVIER_NX.cpu_freqs_hz, XAVIER_NX.gpu_freqs_hz, ["gv11b"])[0] == "xavier-nx"
    assert guess_board(NANO.cpu_freqs_hz, NANO.gpu_freqs_hz, [])[0] == "nano"
    assert guess_board((1_000_000_000, 2_000_000_000), (), [])[0] == "generic"
