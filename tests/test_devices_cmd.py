"""``ecoserve devices`` through the CLI entry point, on a fake tree of each kind of box."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devices.boards import NANO, ORIN, XAVIER_NX
from devices.testing import nano_tree, orin_tree, x86_tree, xavier_nx_tree
from ecoserve.cli import main
from ecoserve.core.knobs import CPU, GPU

TREES = [
    pytest.param(
        xavier_nx_tree,
        "xavier-nx",
        XAVIER_NX.gpu_freqs_hz,
        {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"},
        "ina3221:VDD_IN",
        id="xavier-nx-hwmon",
    ),
    pytest.param(
        nano_tree,
        "nano",
        NANO.gpu_freqs_hz,
        {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"},
        "ina3221:POM_5V_IN",
        id="nano-iio",
    ),
    pytest.param(
        orin_tree,
        "orin",
        ORIN.gpu_freqs_hz,
        {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"},
        "ina3221:VDD_GPU_SOC",
        id="orin",
    ),
    pytest.param(x86_tree, "generic", (), {"package-0", "core"}, "rapl:intel-rapl:0", id="x86"),
]


def devices_json(capsys: pytest.CaptureFixture[str], root: os.PathLike[str]) -> dict:
    assert main(["devices", "--sysfs-root", str(root), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("build", "board", "gpu_hz", "meters", "default_spec"), TREES)
def test_json_names_board_knobs_and_meters(
    tmp_path, capsys, build, board, gpu_hz, meters, default_spec
):
    build(tmp_path)
    report = devices_json(capsys, tmp_path)

    assert report["board"] == board
    knobs = {k["name"]: k for k in report["knobs"]}
    cpu, gpu = knobs[CPU], knobs[GPU]
    assert cpu["writable"] and cpu["values_hz"] and cpu["governors"]
    if gpu_hz:
        assert gpu["writable"] and tuple(gpu["values_hz"]) == tuple(gpu_hz)
        assert "nvhost_podgov" in gpu["governors"]
    else:
        assert not gpu["writable"] and gpu["reason"].startswith("absent:")

    readable = {m["name"] for m in report["meters"] if m["readable"] and not m["estimated"]}
    assert meters <= readable
    specs = {m["spec"] for m in report["meters"]}
    assert default_spec in specs
    # The estimate is always offered, and flagged as such.
    estimate = [m for m in report["meters"] if m["kind"] == "estimate"]
    assert estimate and estimate[0]["estimated"] and estimate[0]["spec"] == "estimate"


@pytest.mark.parametrize(("build", "board", "gpu_hz", "meters", "default_spec"), TREES)
def test_text_report(tmp_path, capsys, build, board, gpu_hz, meters, default_spec):
    build(tmp_path)
    assert main(["devices", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"board  {board}" in out
    assert "writable  yes" in out
    assert "--meter auto uses:" in out and "measured" in out.split("--meter auto uses:")[1]
    assert default_spec in out


def test_x86_without_rapl_access_says_why_and_falls_back_to_estimate(tmp_path, capsys, monkeypatch):
    x86_tree(tmp_path)
    real_read_text = Path.read_text

    # The suite runs as root, which reads 0400 files; refuse as the kernel does for a user.
    def read_text(self: Path, *args, **kwargs) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert main(["devices", "--sysfs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "package-0" in out and "not readable" in out and "permission denied" in out
    assert "--meter auto uses: an ESTIMATE" in out


def test_unwritable_knob_reports_permission_and_fix(tmp_path, capsys, monkeypatch):
    xavier_nx_tree(tmp_path)
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and str(path).endswith("min_freq"):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    report = devices_json(capsys, tmp_path)
    for knob in report["knobs"]:
        assert not knob["writable"]
        assert knob["reason"].startswith("permission:")
        assert "root" in knob["reason"] and "udev" in knob["reason"]


def test_empty_root_reports_absent_knobs_and_still_exits_zero(tmp_path, capsys):
    report = devices_json(capsys, tmp_path)
    assert report["board"] == "generic"
    assert all(k["reason"].startswith("absent:") for k in report["knobs"])
    ina = [m for m in report["meters"] if m["kind"] == "ina3221"]
    assert ina and not ina[0]["readable"] and "no INA3221" in ina[0]["reason"]
