"""Power meters against small fake sysfs trees, fake NVML/Zeus modules and a fake clock."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from devices.base import DeviceError, PermissionDeniedError, PowerMeter
from devices.meters import (
    VALID_SPECS,
    EstimatedCpuMeter,
    Ina3221Meter,
    NvmlMeter,
    RaplMeter,
    SampledPowerMeter,
    ZeusMeter,
    find_ina3221_rails,
    find_rapl_zones,
    open_meter,
    probe_meters,
)
from devices.meters.estimated import CpuUtilization
from devices.meters.ina3221 import is_not_connected

RAPL_RANGE_UJ = 262_143_328_850


# --------------------------------------------------------------------------- helpers


class FakeClock:
    """A settable monotonic clock, so integration can be checked exactly."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def write(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    return path


def hwmon_chip(
    root: Path, device: str, channels: dict[int, tuple[str, float, float]], hwmon: str = "hwmon3"
) -> Path:
    """An ``ina3221`` hwmon directory; channels: c -> (label, mV, mA)."""
    chip = root / "sys/bus/i2c/drivers/ina3221" / device / "hwmon" / hwmon
    for c, (label, mv, ma) in channels.items():
        write(chip / f"in{c}_label", label)
        write(chip / f"in{c}_input", int(mv))
        write(chip / f"curr{c}_input", int(ma))
        write(chip / f"curr{c}_max", 5000)
    write(chip / "name", "ina3221")
    return chip


def set_rail(chip: Path, c: int, mv: float, ma: float) -> None:
    write(chip / f"in{c}_input", int(mv))
    write(chip / f"curr{c}_input", int(ma))


def xavier_nx_jp5(root: Path) -> Path:
    """Xavier NX on JetPack 5: 7-0040 with VDD_IN (5 W), a shunt-sum in7 and nothing else."""
    chip = hwmon_chip(
        root,
        "7-0040",
        {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU_GPU_CV", 5000, 400), 3: ("VDD_SOC", 5000, 300)},
    )
    write(chip / "in7_label", "sum of shunt voltages")
    write(chip / "in7_input", 12)
    write(chip / "in4_input", 3)  # shunt voltage, not a rail
    return chip


def nano_iio(root: Path, with_power: bool = True) -> Path:
    """Jetson Nano on JetPack 4: one ina3221x iio device, POM_5V_IN first."""
    chip = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (name, mv, ma) in enumerate(
        [("POM_5V_IN", 5000, 800), ("POM_5V_GPU", 5000, 200), ("POM_5V_CPU", 5000, 300)]
    ):
        write(chip / f"rail_name_{n}", name)
        write(chip / f"in_voltage{n}_input", mv)
        write(chip / f"in_current{n}_input", ma)
        if with_power:
            write(chip / f"in_power{n}_input", mv * ma // 1000)
    return chip


def agx_orin(root: Path) -> tuple[Path, Path]:
    """AGX Orin: three rails on 1-0040 (their sum is the board), one sub-rail on 1-0041."""
    a = hwmon_chip(
        root,
        "1-0040",
        {
            1: ("VDD_GPU_SOC", 5000, 1000),
            2: ("VDD_CPU_CV", 5000, 600),
            3: ("VIN_SYS_5V0", 5000, 400),
        },
        hwmon="hwmon1",
    )
    b = hwmon_chip(
        root,
        "1-0041",
        {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 5000, 200), 3: ("NC", 0, 0)},
        hwmon="hwmon2",
    )
    return a, b


def rapl_zone(root: Path, zone_id: str, name: str, energy_uj: int) -> Path:
    d = root / "sys/class/powercap" / zone_id
    write(d / "name", name)
    write(d / "energy_uj", energy_uj)
    write(d / "max_energy_range_uj", RAPL_RANGE_UJ)
    return d


def rapl_tree(root: Path, start_uj: int = 1_000_000) -> Path:
    """One package with core/dram parts, plus an MMIO twin and a psys zone to ignore."""
    pkg = rapl_zone(root, "intel-rapl:0", "package-0", start_uj)
    rapl_zone(root, "intel-rapl:0:0", "core", 500)
    rapl_zone(root, "intel-rapl:0:1", "dram", 700)
    rapl_zone(root, "intel-rapl-mmio:0", "package-0", start_uj)
    rapl_zone(root, "intel-rapl:1", "psys", 9_000_000)
    (root / "sys/class/powercap/intel-rapl").mkdir(parents=True, exist_ok=True)
    return pkg


def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - mirrors pynvml's name
    def __init__(self) -> None:
        super().__init__(3)


class FakeNvml:
    """Just enough of ``pynvml`` for the meter: one GPU, settable counters."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_FUNCTION_NOT_FOUND = 13

    def __init__(self, gpus: int = 1, energy: bool = True, init_fails: bool = False) -> None:
        self.gpus = gpus
        self.energy = energy
        self.init_fails = init_fails
        self.energy_mj = 1_000_000
        self.power_mw = 200_000
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_fails:
            raise NVMLError(9)  # driver not loaded
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:  # noqa: N802
        return f"h{i}"

    def nvmlDeviceGetName(self, h: str) -> bytes:  # noqa: N802
        return b"Fake GPU"

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:  # noqa: N802
        if not self.energy:
            raise NVMLError_NotSupported()
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:  # noqa: N802
        return self.power_mw


# --------------------------------------------------------------------------- sampling


def test_sampled_constant_power_integrates_exactly() -> None:
    clock = FakeClock()
    m = SampledPowerMeter(lambda: 5.0, rate_hz=0, clock=clock)
    for i in range(1, 5):
        clock.t = 0.5 * i
        m.sample_once()
    assert m.energy_joules() == pytest.approx(10.0)
    m.close()


def test_sampled_ramp_is_trapezoid_exact_with_uneven_samples() -> None:
    clock = FakeClock()
    m = SampledPowerMeter(lambda: 2.0 * clock.t, clock=clock, start=False)
    for t in (0.1, 0.25, 0.9, 1.3, 2.0):
        clock.t = t
        m.sample_once()
    assert m.energy_joules() == pytest.approx(4.0)  # ∫0..2 2t dt


def test_sampled_tail_counts_time_since_last_sample_and_never_decreases() -> None:
    clock = FakeClock()
    watts = {"w": 10.0}
    m = SampledPowerMeter(lambda: watts["w"], rate_hz=0, clock=clock)
    clock.t = 1.0
    m.sample_once()
    clock.t = 1.9  # read right after a burst, before the next sample
    assert m.energy_joules() == pytest.approx(19.0)
    watts["w"] = 0.0
    m.sample_once(2.0)  # trapezoid: 10 + 5 = 15 J, but 19 J was already reported
    clock.t = 2.0
    assert m.energy_joules() == pytest.approx(19.0)  # held, never decreases
    assert m.last_watts == 0.0
    watts["w"] = 100.0
    m.sample_once(2.1)  # 15 + 5 = 20 J: the integral has caught up
    assert m.energy_joules() == pytest.approx(20.0)


def test_sampled_close_freezes_total() -> None:
    clock = FakeClock()
    m = SampledPowerMeter(lambda: 4.0, rate_hz=0, clock=clock)
    clock.t = 1.0
    m.close()
    clock.t = 5.0
    assert m.energy_joules() == pytest.approx(4.0)
    m.close()


def test_sampled_rejects_negative_rate() -> None:
    with pytest.raises(ValueError):
        SampledPowerMeter(lambda: 1.0, rate_hz=-1)


def test_real_sampling_thread_at_100hz() -> None:
    calls = []

    def read() -> float:
        calls.append(time.monotonic())
        return 10.0

    t0 = time.monotonic()
    m = SampledPowerMeter(read, rate_hz=100.0)
    time.sleep(0.3)
    seen = [m.energy_joules() for _ in range(50)]
    t1 = time.monotonic()
    m.close()
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(10.0 * (t1 - t0), rel=0.1)
    assert len(calls) >= 15  # ~30 expected; loose for a loaded machine
    assert m.errors == 0


def test_sampling_thread_survives_read_errors() -> None:
    state = {"n": 0}

    def flaky() -> float:
        state["n"] += 1
        if state["n"] % 2 == 0:
            raise OSError("transient")
        return 1.0

    m = SampledPowerMeter(flaky, rate_hz=200.0)
    assert wait_until(lambda: m.errors >= 2)
    m.close()
    assert isinstance(m.last_error, OSError)
    assert m.energy_joules() > 0


def test_check_reports_a_sensor_that_stopped_answering() -> None:
    state = {"first": True}

    def dies() -> float:
        if state["first"]:
            state["first"] = False
            return 3.0
        raise OSError("gone")

    m = SampledPowerMeter(dies, rate_hz=200.0, source="test")
    assert wait_until(lambda: m.errors >= 20)
    with pytest.raises(DeviceError, match="no good power reading"):
        m.check()
    m.close()
    healthy = SampledPowerMeter(lambda: 1.0, rate_hz=0)
    healthy.check()


# --------------------------------------------------------------------------- INA3221


def test_xavier_nx_hwmon_rails_skip_shunt_sum(tmp_path: Path) -> None:
    xavier_nx_jp5(tmp_path)
    rails = find_ina3221_rails(tmp_path)
    assert [r.label for r in rails] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    assert {r.driver for r in rails} == {"hwmon"} and rails[0].device == "7-0040"
    assert all("in7" not in str(p) for r in rails for p in r.paths)


def test_xavier_nx_energy_constant_and_changing(tmp_path: Path) -> None:
    chip = xavier_nx_jp5(tmp_path)
    clock = FakeClock()
    m = Ina3221Meter(tmp_path, rate_hz=0, clock=clock)
    assert m.source == "ina3221:VDD_IN" and not m.estimated
    for t in (1.0, 2.0):
        clock.t = t
        m.sample_once()
    assert m.energy_joules() == pytest.approx(10.0)  # 5 V × 1 A for 2 s
    # ramp 5 W -> 15 W over 2 s (current 1 A -> 3 A in steps): trapezoid is exact
    for t, ma in ((2.5, 1500), (3.0, 2000), (4.0, 3000)):
        set_rail(chip, 1, 5000, ma)
        clock.t = t
        m.sample_once()
    assert m.energy_joules() == pytest.approx(10.0 + 20.0)
    assert m.read_rails_mw() == {"VDD_IN": pytest.approx(15000.0)}
    m.close()


def test_explicit_rails_sum_and_unknown_rail(tmp_path: Path) -> None:
    xavier_nx_jp5(tmp_path)
    clock = FakeClock()
    m = Ina3221Meter(tmp_path, rails=["VDD_CPU_GPU_CV", "vdd_soc"], rate_hz=0, clock=clock)
    assert m.source == "ina3221:VDD_CPU_GPU_CV+VDD_SOC"
    clock.t = 1.0
    m.sample_once()
    assert m.energy_joules() == pytest.approx(2.0 + 1.5)
    with pytest.raises(DeviceError, match="VDD_IN"):
        Ina3221Meter(tmp_path, rails=["VDD_GPU"], rate_hz=0)


def test_not_connected_labels() -> None:
    assert is_not_connected("NC") and is_not_connected("nc") and is_not_connected("CH2_NC")
    assert not is_not_connected("VDD_SYNC") and not is_not_connected("VDD_IN")


def test_nano_iio_power_file_and_vi_fallback(tmp_path: Path) -> None:
    nano_iio(tmp_path)
    rails = find_ina3221_rails(tmp_path)
    assert [r.label for r in rails] == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]
    assert rails[0].driver == "iio" and rails[0].device == "6-0040"
    clock = FakeClock()
    m = Ina3221Meter(tmp_path, rate_hz=0, clock=clock)
    assert m.source == "ina3221:POM_5V_IN"
    clock.t = 2.0
    m.sample_once()
    assert m.energy_joules() == pytest.approx(8.0)  # 4000 mW × 2 s

    other = tmp_path / "no-power"
    nano_iio(other, with_power=False)
    m2 = Ina3221Meter(other, rate_hz=0, clock=clock)
    assert m2.rails[0].power_path is None
    assert m2.read_rails_mw() == {"POM_5V_IN": pytest.approx(4000.0)}


def test_agx_orin_total_is_sum_of_first_chip(tmp_path: Path) -> None:
    agx_orin(tmp_path)
    labels = [r.label for r in find_ina3221_rails(tmp_path)]
    assert labels == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    clock = FakeClock()
    m = Ina3221Meter(tmp_path, rate_hz=0, clock=clock)
    assert m.source == "ina3221:VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    clock.t = 1.0
    m.sample_once()
    assert m.energy_joules() == pytest.approx(5.0 + 3.0 + 2.0)  # not + 1 W of 1-0041


def test_ina3221_absent(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no INA3221"):
        Ina3221Meter(tmp_path, rate_hz=0)


def test_ina3221_background_sampling(tmp_path: Path) -> None:
    xavier_nx_jp5(tmp_path)
    t0 = time.monotonic()
    m = Ina3221Meter(tmp_path, rate_hz=100.0)
    time.sleep(0.1)
    e = m.energy_joules()
    t1 = time.monotonic()
    m.close()
    assert e == pytest.approx(5.0 * (t1 - t0), rel=0.2)


# --------------------------------------------------------------------------- RAPL


def test_rapl_zones_and_default_is_packages_only(tmp_path: Path) -> None:
    rapl_tree(tmp_path)
    zones = find_rapl_zones(tmp_path)
    assert [z.zone_id for z in zones] == [
        "intel-rapl:0",
        "intel-rapl:0:0",
        "intel-rapl:0:1",
        "intel-rapl:1",
    ]
    m = RaplMeter(tmp_path, poll_s=0)
    assert m.source == "rapl:package-0" and not m.estimated
    assert m.energy_joules() == 0.0
    m.close()


def test_rapl_wraparound_mid_window(tmp_path: Path) -> None:
    pkg = rapl_tree(tmp_path, start_uj=RAPL_RANGE_UJ - 1_000_000)
    m = RaplMeter(tmp_path, poll_s=0)
    write(pkg / "energy_uj", 2_000_000)  # wrapped: 1 J before the wrap + 2 J after
    assert m.energy_joules() == pytest.approx(3.0)
    write(pkg / "energy_uj", 2_500_000)
    assert m.energy_joules() == pytest.approx(3.5)
    m.close()
    write(pkg / "energy_uj", 9_000_000)
    assert m.energy_joules() == pytest.approx(3.5)  # frozen after close


def test_rapl_two_packages_and_explicit_zones(tmp_path: Path) -> None:
    p0 = rapl_tree(tmp_path)
    p1 = rapl_zone(tmp_path, "intel-rapl:2", "package-1", 0)
    m = RaplMeter(tmp_path, poll_s=0)
    assert m.source == "rapl:package-0+package-1"
    write(p0 / "energy_uj", 3_000_000)
    write(p1 / "energy_uj", 4_000_000)
    assert m.energy_joules() == pytest.approx(6.0)
    assert m.zone_joules() == {"package-0": pytest.approx(2.0), "package-1": pytest.approx(4.0)}
    dram = RaplMeter(tmp_path, zones=["dram"], poll_s=0)
    assert dram.source == "rapl:dram"
    write(tmp_path / "sys/class/powercap/intel-rapl:0:1/energy_uj", 1_700)
    assert dram.energy_joules() == pytest.approx(0.001)
    with pytest.raises(DeviceError, match="package-0"):
        RaplMeter(tmp_path, zones=["uncore"], poll_s=0)


def test_rapl_background_poller_catches_wraps_between_calls(tmp_path: Path) -> None:
    pkg = rapl_tree(tmp_path, start_uj=RAPL_RANGE_UJ - 1_000_000)
    m = RaplMeter(tmp_path, poll_s=0.01)
    write(pkg / "energy_uj", 1_000_000)  # wrap 1
    assert wait_until(lambda: m.zone_joules()["package-0"] == pytest.approx(2.0))
    write(pkg / "energy_uj", RAPL_RANGE_UJ - 1_000_000)  # no caller read in between...
    assert wait_until(lambda: m.zone_joules()["package-0"] > 2.0)
    write(pkg / "energy_uj", 500_000)  # ...and wrap 2
    expected = (RAPL_RANGE_UJ + 1_500_000) / 1e6
    assert wait_until(lambda: m.zone_joules()["package-0"] == pytest.approx(expected))
    assert m.energy_joules() == pytest.approx(expected)
    m.close()


def test_rapl_permission_denied_says_how_to_fix(tmp_path: Path) -> None:
    rapl_tree(tmp_path)

    def root_only(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    with pytest.raises(PermissionDeniedError) as err:
        RaplMeter(tmp_path, poll_s=0, read_text=root_only)
    msg = str(err.value)
    assert "energy_uj" in msg and "CVE-2020-8694" in msg
    assert "chmod" in msg and "udev" in msg and "root" in msg


def test_rapl_absent(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no RAPL"):
        RaplMeter(tmp_path, poll_s=0)


# --------------------------------------------------------------------------- NVML


def test_nvml_total_energy_counter() -> None:
    nvml = FakeNvml()
    m = NvmlMeter(0, nvml_module=nvml)
    assert m.method == "total-energy" and m.source == "nvml:0:total-energy"
    assert m.gpu_name == "Fake GPU" and nvml.inits == 1
    nvml.energy_mj += 5_000
    assert m.energy_joules() == pytest.approx(5.0)
    m.close()
    nvml.energy_mj += 5_000
    assert m.energy_joules() == pytest.approx(5.0)
    m.close()
    assert nvml.shutdowns == 1


def test_nvml_falls_back_to_power_sampling_when_not_supported() -> None:
    nvml = FakeNvml(energy=False)
    clock = FakeClock()
    m = NvmlMeter(0, nvml_module=nvml, clock=clock, start=False)
    assert m.method == "power-sampling" and m.source == "nvml:0:power"
    assert m.sampler is not None
    clock.t = 2.0
    m.sampler.sample_once()
    assert m.energy_joules() == pytest.approx(400.0)  # 200 W × 2 s
    m.close()
    assert nvml.shutdowns == 1


def test_nvml_absent_gpu_library_or_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = FakeNvml(gpus=1)
    with pytest.raises(DeviceError, match="GPU 1"):
        NvmlMeter(1, nvml_module=nvml)
    assert nvml.shutdowns == nvml.inits == 1
    with pytest.raises(DeviceError, match="driver"):
        NvmlMeter(0, nvml_module=FakeNvml(init_fails=True))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    with pytest.raises(DeviceError, match="nvidia-ml-py"):
        NvmlMeter(0)


# --------------------------------------------------------------------------- estimate, Zeus


def test_estimated_meter_is_labelled_and_linear_in_util() -> None:
    clock = FakeClock()
    util = {"u": 0.5}
    m = EstimatedCpuMeter(20.0, idle_w=4.0, read_util=lambda: util["u"], clock=clock, start=False)
    assert m.estimated and m.source == "estimate:cpu-util×TDP"
    clock.t = 1.0
    m.sample_once()
    assert m.energy_joules() == pytest.approx(12.0)  # 4 + 16 × 0.5
    util["u"] = 7.0  # clamped to 1
    clock.t = 2.0
    m.sample_once()
    assert m.energy_joules() == pytest.approx(12.0 + 0.5 * (12.0 + 20.0))
    with pytest.raises(ValueError):
        EstimatedCpuMeter(10.0, idle_w=11.0, start=False)


def test_cpu_utilization_reader_is_a_fraction() -> None:
    read = CpuUtilization()
    sum(i * i for i in range(20000))
    assert 0.0 <= read() <= 1.0


def test_zeus_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    with pytest.raises(DeviceError, match="zeus-ml"):
        ZeusMeter()
    with pytest.raises(DeviceError, match="zeus-ml"):
        open_meter("zeus")


def test_zeus_with_fake_module() -> None:
    counter = {"j": 0.0}

    class FakeMonitor:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            self.open: dict[str, float] = {}

        def begin_window(self, key: str, sync_execution: bool = True) -> None:
            assert key not in self.open
            self.open[key] = counter["j"]

        def end_window(self, key: str, sync_execution: bool = True) -> Any:
            return SimpleNamespace(total_energy=counter["j"] - self.open.pop(key))

    fake = SimpleNamespace(ZeusMonitor=FakeMonitor)
    m = ZeusMeter(gpu_indices=[0], zeus_module=fake)
    assert m.source == "zeus" and m._monitor.kwargs == {"gpu_indices": [0]}
    counter["j"] = 3.0
    assert m.energy_joules() == pytest.approx(3.0)
    counter["j"] = 4.5
    assert m.energy_joules() == pytest.approx(4.5)
    m.close()
    counter["j"] = 10.0
    assert m.energy_joules() == pytest.approx(4.5)
    assert isinstance(open_meter("zeus", zeus_module=fake), ZeusMeter)


# --------------------------------------------------------------------------- specs, probe


def _open(spec: str, root: Path, **kw: Any) -> PowerMeter:
    meter = open_meter(spec, root, **kw)
    meter.close()
    return meter


def test_open_meter_specs(tmp_path: Path) -> None:
    xavier_nx_jp5(tmp_path)
    rapl_tree(tmp_path)
    nvml = FakeNvml(gpus=2)
    m = _open("ina3221", tmp_path)
    assert isinstance(m, Ina3221Meter) and m.source == "ina3221:VDD_IN"
    pair = _open("ina3221:VDD_SOC, VDD_CPU_GPU_CV", tmp_path)
    assert pair.source == "ina3221:VDD_SOC+VDD_CPU_GPU_CV"
    assert _open("rapl", tmp_path).source == "rapl:package-0"
    assert _open("rapl:intel-rapl:0:1", tmp_path).source == "rapl:dram"
    nv = _open("nvml:1", tmp_path, nvml_module=nvml)
    assert isinstance(nv, NvmlMeter) and nv.index == 1
    assert _open("NVML", tmp_path, nvml_module=nvml).index == 0  # type: ignore[attr-defined]
    est = _open("estimate:25", tmp_path)
    assert isinstance(est, EstimatedCpuMeter) and est.tdp_w == 25.0 and est.estimated
    assert _open("estimate", tmp_path).tdp_w == 15.0  # type: ignore[attr-defined]
    assert isinstance(_open("auto", tmp_path, nvml_module=nvml), Ina3221Meter)


def test_open_meter_auto_fallbacks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rapl_root = tmp_path / "x86"
    rapl_tree(rapl_root)
    assert isinstance(_open("auto", rapl_root, nvml_module=FakeNvml()), RaplMeter)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert isinstance(_open("auto", empty, nvml_module=FakeNvml()), NvmlMeter)
    with caplog.at_level("WARNING"):
        est = _open("auto", empty, nvml_module=FakeNvml(init_fails=True))
    assert isinstance(est, EstimatedCpuMeter) and est.estimated and est.tdp_w == 15.0
    assert "ESTIMATED" in caplog.text and "rapl" in caplog.text


@pytest.mark.parametrize(
    "spec", ["bogus", "nvml:x", "nvml:-1", "estimate:-3", "estimate:abc", "ina3221:", "zeus:1"]
)
def test_open_meter_bad_spec_lists_valid_ones(tmp_path: Path, spec: str) -> None:
    with pytest.raises(ValueError) as err:
        open_meter(spec, tmp_path)
    for valid in VALID_SPECS:
        assert valid in str(err.value)


def test_open_meter_named_sensor_absent_is_a_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError):
        open_meter("ina3221", tmp_path)
    with pytest.raises(DeviceError):
        open_meter("rapl", tmp_path)


def test_probe_meters(tmp_path: Path) -> None:
    agx_orin(tmp_path)
    rapl_tree(tmp_path)
    # an energy_uj that cannot be read (a directory stands in for a refused read)
    zone = rapl_zone(tmp_path, "intel-rapl:0:2", "uncore", 1)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()
    entries = probe_meters(tmp_path, nvml_module=FakeNvml(gpus=1))
    keys = {"name", "kind", "path", "readable", "reason", "estimated", "spec"}
    assert all(keys <= set(e) for e in entries)
    by = {(e["kind"], e["name"]): e for e in entries}
    assert by[("ina3221", "VDD_GPU_SOC")]["reason"] == "summed into the default"
    assert (
        by[("ina3221", "VDDQ_VDD2_1V8AO")]["readable"]
        and not by[("ina3221", "VDDQ_VDD2_1V8AO")]["reason"]
    )
    assert ("ina3221", "NC") not in by
    assert by[("rapl", "package-0")]["reason"] == "default"
    assert by[("rapl", "psys")]["readable"]
    assert not by[("rapl", "uncore")]["readable"]
    assert by[("nvml", "GPU0 Fake GPU")]["spec"] == "nvml:0"
    assert by[("estimate", "cpu-util×TDP")]["estimated"]
    assert entries[-1]["kind"] == "estimate"
    for e in entries:
        if e["readable"] and e["kind"] in ("ina3221", "rapl"):
            _open(e["spec"], tmp_path)


def test_probe_meters_empty_tree_says_what_is_missing(tmp_path: Path) -> None:
    entries = probe_meters(tmp_path, nvml_module=FakeNvml(init_fails=True))
    missing = {e["kind"]: e for e in entries if not e["readable"]}
    assert {"ina3221", "rapl", "nvml"} <= set(missing)
    assert "driver" in missing["nvml"]["reason"]


def test_meters_close_their_threads(tmp_path: Path) -> None:
    xavier_nx_jp5(tmp_path)
    rapl_tree(tmp_path)
    meters = [Ina3221Meter(tmp_path), RaplMeter(tmp_path, poll_s=0.05), EstimatedCpuMeter()]
    threads = [m._thread for m in meters]  # type: ignore[attr-defined]
    assert all(t is not None and t.is_alive() and t.daemon for t in threads)
    for m in meters:
        m.close()
    assert not any(t.is_alive() for t in threads if t is not None)
