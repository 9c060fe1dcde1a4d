"""The real cpufreq/devfreq actuators, run against fake board trees under a temporary root."""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from devices.base import Actuator, DeviceError, PermissionDeniedError
from devices.boards import NANO, ORIN, XAVIER_NX
from devices.composite import CompositeActuator, install_restore_handlers, restoring
from devices.cpufreq import CpufreqActuator, range_steps_khz
from devices.devfreq import DevfreqActuator, find_devfreq_node
from devices.discovery import open_sysfs_actuator
from devices.sysfs import SysfsRoot
from devices.testing import (
    FakeKernel,
    add_cpufreq_policy,
    nano_tree,
    orin_tree,
    put,
    x86_tree,
    xavier_nx_tree,
)
from devices.watchdog import Watchdog
from ecoserve.core.knobs import CPU, GPU, Knob

POLICY = "sys/devices/system/cpu/cpufreq/policy{}"
NX_GPU = "sys/class/devfreq/17000000.gv11b"


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text().strip()


def policy_state(root: Path, index: int) -> tuple[str, str, str]:
    d = POLICY.format(index)
    return (
        read(root, f"{d}/scaling_governor"),
        read(root, f"{d}/scaling_min_freq"),
        read(root, f"{d}/scaling_max_freq"),
    )


def node_state(root: Path, rel: str) -> tuple[str, str, str]:
    return (
        read(root, f"{rel}/governor"),
        read(root, f"{rel}/min_freq"),
        read(root, f"{rel}/max_freq"),
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every regular file's contents: "restored" means this is unchanged."""
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def nx(tmp_path: Path) -> tuple[Path, FakeKernel, SysfsRoot]:
    xavier_nx_tree(tmp_path)
    kernel = FakeKernel()
    return tmp_path, kernel, SysfsRoot(tmp_path, hook=kernel, busy_delay_s=0)


# -- SysfsRoot ---------------------------------------------------------------------------


def test_sysfs_root_reads_under_its_root_and_strips_device_tree_nul(nx):
    tree, _, root = nx
    assert root.path("/sys/class/devfreq") == tree / "sys/class/devfreq"
    assert root.read_text(f"{NX_GPU}/device/of_node/name") == "gv11b"
    assert root.read_ints(f"{POLICY.format(0)}/scaling_available_frequencies")[0] == 115200
    assert root.glob("sys/devices/system/cpu/cpufreq/policy*") == [
        POLICY.format(i) for i in (0, 2, 4)
    ]
    with pytest.raises(DeviceError, match="expected an integer.*unsupported"):
        root.read_int(f"{POLICY.format(0)}/scaling_setspeed")


def test_sysfs_write_errors_name_the_file_and_the_fix(nx):
    tree, kernel, root = nx
    target = f"{NX_GPU}/max_freq"
    kernel.deny(target)
    with pytest.raises(PermissionDeniedError) as denied:
        root.write(target, 510000000)
    assert str(tree / target) in str(denied.value)
    assert "root" in str(denied.value) and "udev" in str(denied.value)
    assert root.access_error(target) == errno.EACCES
    with pytest.raises(DeviceError, match="refused 'turbo'.*scaling_governor"):
        root.write(f"{POLICY.format(0)}/scaling_governor", "turbo")
    with pytest.raises(DeviceError, match="no such file"):
        root.write("sys/nowhere", 1)


def test_sysfs_write_retries_ebusy(nx):
    tree, kernel, root = nx
    rel = f"{POLICY.format(0)}/scaling_min_freq"
    kernel.busy(rel, 3)
    root.write(rel, 1036800)
    assert read(tree, rel) == "1036800"
    kernel.busy(rel, root.busy_retries + 1)
    with pytest.raises(DeviceError, match="busy"):
        root.write(rel, 1113600)


# -- knob tables -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "cpu_hz", "gpu_hz"),
    [
        (xavier_nx_tree, XAVIER_NX.cpu_freqs_hz, XAVIER_NX.gpu_freqs_hz),
        (nano_tree, NANO.cpu_freqs_hz, NANO.gpu_freqs_hz),
        (orin_tree, ORIN.cpu_freqs_hz, ORIN.gpu_freqs_hz),
    ],
    ids=["xavier-nx", "nano", "orin"],
)
def test_jetson_knob_tables_are_in_hz(tmp_path, build, cpu_hz, gpu_hz):
    build(tmp_path)
    act = open_sysfs_actuator(SysfsRoot(tmp_path))
    knobs = {k.name: k for k in act.knobs()}
    assert knobs[CPU].values == tuple(float(f) for f in cpu_hz)
    assert knobs[GPU].values == tuple(float(f) for f in gpu_hz)
    assert act.warnings() == []


def test_x86_table_is_sorted_ascending(tmp_path):
    x86_tree(tmp_path, userspace=True)
    act = CpufreqActuator(SysfsRoot(tmp_path))
    values = act.knobs()[0].values
    assert values[0] == 800e6 and values[-1] == 3401e6
    assert list(values) == sorted(values) and len(values) == 15
    assert act.table_kind == "table"


def test_range_driver_is_cut_into_about_16_steps_of_100_mhz(tmp_path):
    x86_tree(tmp_path, userspace=False)
    act = CpufreqActuator(SysfsRoot(tmp_path))
    values = act.knobs()[0].values
    assert act.table_kind == "range"
    assert values[0] == 800e6 and values[-1] == 4200e6
    assert len(values) == 16
    assert all(v % 100e6 == 0 for v in values)


def test_range_steps_keep_exact_ends():
    assert range_steps_khz(1000, 1000) == (1000,)
    assert range_steps_khz(1_000_000, 1_200_000) == (1_000_000, 1_100_000, 1_200_000)
    assert range_steps_khz(400_050, 3_600_000)[0] == 400_050
    with pytest.raises(ValueError):
        range_steps_khz(2, 1)


def test_policies_with_no_common_frequency_are_refused(tmp_path):
    common = {"governors": "userspace schedutil", "governor": "schedutil"}
    add_cpufreq_policy(tmp_path, 0, (0, 1), table_khz=(408000, 816000), **common)
    add_cpufreq_policy(tmp_path, 2, (2, 3), table_khz=(600000, 1800000), **common)
    with pytest.raises(DeviceError, match="share no frequency.*policies="):
        CpufreqActuator(SysfsRoot(tmp_path))
    assert CpufreqActuator(SysfsRoot(tmp_path), policies=[2]).table_hz == (600000000, 1800000000)


def test_policies_of_offline_cpus_are_left_out(nx):
    tree, kernel, root = nx
    kernel.fail_reads("sys/devices/system/cpu/cpufreq/policy[24]/*")  # a 2-core power mode
    act = CpufreqActuator(root)
    assert [p.index for p in act.policies] == [0]
    assert len(act.warnings()) == 2 and "policy2 not controlled" in act.warnings()[0]
    assert "offline" in act.warnings()[0]
    act.apply({CPU: 729.6e6})
    assert act.current() == {CPU: 729.6e6}
    with pytest.raises(DeviceError, match="busy"):
        CpufreqActuator(root, policies=[0, 2])


# -- pinning -----------------------------------------------------------------------------


def test_userspace_pinning_sets_every_policy_and_reads_back(nx):
    tree, _, root = nx
    act = CpufreqActuator(root)
    act.apply({CPU: 1907.2e6})  # above the power-mode cap of 1420.8 MHz: limits are opened
    for i in (0, 2, 4):
        d = POLICY.format(i)
        assert read(tree, f"{d}/scaling_governor") == "userspace"
        assert read(tree, f"{d}/scaling_setspeed") == "1907200"
    assert act.current() == {CPU: 1907.2e6}
    act.apply({CPU: 115.2e6, GPU: 1.0})  # names it does not own are ignored
    assert act.current() == {CPU: 115.2e6}


def test_devfreq_pins_min_equal_max_under_podgov(nx):
    tree, _, root = nx
    act = DevfreqActuator(root)
    act.apply({GPU: 510e6})
    assert node_state(tree, NX_GPU) == ("nvhost_podgov", "510000000", "510000000")
    assert act.current() == {GPU: 510e6}
    act.apply({GPU: 1109.25e6})
    assert node_state(tree, NX_GPU)[1:] == ("1109250000", "1109250000")


def test_min_max_pinning_writes_in_an_order_that_never_crosses(tmp_path):
    x86_tree(tmp_path, userspace=False, cpus=1)
    kernel = FakeKernel(strict_limits=True)  # crossing min/max is EINVAL, as older kernels
    act = CpufreqActuator(SysfsRoot(tmp_path, hook=kernel))
    values = act.knobs()[0].values
    for hz in (values[-1], values[0], values[7], values[2], values[-1]):
        act.apply({CPU: hz})
        assert act.current() == {CPU: hz}
        assert policy_state(tmp_path, 0)[1:] == (str(int(hz / 1000)),) * 2
    assert policy_state(tmp_path, 0)[0] == "powersave"  # governor untouched
    raise_writes = [rel.rsplit("_", 2)[-2] for rel, _ in kernel.writes[-2:]]
    assert raise_writes == ["max", "min"]  # raising: max first


def test_apply_reports_the_frequency_the_kernel_settled_on(nx):
    tree, _, _ = nx

    class RoundingKernel(FakeKernel):
        """Picks the next operating point up, as a driver may (a Nano asked 950 gave 998.4)."""

        def before_write(self, path: Path, rel: str, text: str) -> str:
            if path.name in ("min_freq", "max_freq") and text.strip() == "510000000":
                text = "599250000"
            return super().before_write(path, rel, text)

    act = DevfreqActuator(SysfsRoot(tree, hook=RoundingKernel()))
    assert act.set_frequency(510e6) == 599250000
    assert act.current() == {GPU: 599250000.0}


def test_apply_snaps_to_the_table_but_set_frequency_refuses(nx):
    tree, kernel, root = nx
    cpu = CpufreqActuator(root)
    gpu = DevfreqActuator(root)
    cpu.apply({CPU: 1.0e9})
    assert read(tree, f"{POLICY.format(0)}/scaling_setspeed") == "1036800"
    before = len(kernel.writes)
    with pytest.raises(DeviceError, match=r"not a CPU operating point.*1036\.8"):
        cpu.set_frequency(1.0e9)
    with pytest.raises(DeviceError, match=r"not an operating point of 17000000.gv11b.*510"):
        gpu.set_frequency(500e6)
    assert len(kernel.writes) == before
    assert cpu.set_frequency(1113.6e6) == 1113600000
    assert gpu.set_frequency(408e6) == 408000000


# -- restore -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [xavier_nx_tree, nano_tree, orin_tree, x86_tree, lambda p: x86_tree(p, userspace=False)],
    ids=["xavier-nx", "nano", "orin", "x86-userspace", "x86-pstate"],
)
def test_restore_puts_back_exactly_what_was_found(tmp_path, build):
    build(tmp_path)
    before = snapshot(tmp_path)
    kernel = FakeKernel()
    act = open_sysfs_actuator(SysfsRoot(tmp_path, hook=kernel, busy_delay_s=0))
    for index in (0, -1, 3):
        act.apply({k.name: k.values[index] for k in act.knobs()})
    assert snapshot(tmp_path) != before
    act.restore()
    after = snapshot(tmp_path)
    changed = {k for k in before if before[k] != after[k]}
    # Only what the kernel derives itself (the frequency running now) may differ.
    assert all(k.endswith("cur_freq") for k in changed), changed
    writes = len(kernel.writes)
    act.restore()  # idempotent: nothing left to write
    assert len(kernel.writes) == writes
    assert snapshot(tmp_path) == after


def test_restore_without_any_change_writes_nothing(nx):
    _, kernel, root = nx
    open_sysfs_actuator(root).restore()
    assert kernel.writes == []


def test_restore_runs_when_a_with_block_raises(nx):
    tree, _, root = nx
    found = (policy_state(tree, 0), node_state(tree, NX_GPU))
    with pytest.raises(RuntimeError, match="model crashed"):
        with open_sysfs_actuator(root) as act:
            act.apply({CPU: 115.2e6, GPU: 114.75e6})
            assert policy_state(tree, 0)[0] == "userspace"
            raise RuntimeError("model crashed")
    assert (policy_state(tree, 0), node_state(tree, NX_GPU)) == found

    gpu = DevfreqActuator(root)
    with pytest.raises(KeyError):
        with restoring(gpu):
            gpu.apply({GPU: 306e6})
            raise KeyError("boom")
    assert node_state(tree, NX_GPU) == found[1]


# -- permissions -------------------------------------------------------------------------


def test_permission_denied_drops_the_knob_with_one_warning(nx):
    tree, kernel, root = nx
    kernel.deny(f"{NX_GPU}/*_freq")
    act = open_sysfs_actuator(root)
    gpu_found = node_state(tree, NX_GPU)
    for _ in range(3):
        act.apply({CPU: 729.6e6, GPU: 510e6})  # never raises for permissions
    warnings = act.warnings()
    assert len(warnings) == 1
    assert "GPU frequency" in warnings[0] and str(tree / NX_GPU) in warnings[0]
    assert "udev" in warnings[0]
    assert [k.name for k in act.knobs()] == [CPU]
    assert act.current() == {CPU: 729.6e6}  # the other knob still works
    assert node_state(tree, NX_GPU) == gpu_found
    act.restore()
    assert policy_state(tree, 0) == ("schedutil", "1190400", "1420800")


def test_permission_denied_midway_undoes_the_policies_already_pinned(nx):
    tree, kernel, root = nx
    kernel.deny(f"{POLICY.format(4)}/scaling_governor")
    act = open_sysfs_actuator(root)
    act.apply({CPU: 1420.8e6, GPU: 306e6})
    assert [k.name for k in act.knobs()] == [GPU]
    assert len(act.warnings()) == 1 and "CPU frequency" in act.warnings()[0]
    for i in (0, 2, 4):
        assert policy_state(tree, i) == ("schedutil", "1190400", "1420800")
    assert node_state(tree, NX_GPU)[1:] == ("306000000", "306000000")
    with pytest.raises(DeviceError, match="CPU frequency control disabled"):
        act.actuators[0].set_frequency(1420.8e6)  # type: ignore[attr-defined]


# -- hand-back to the governor ------------------------------------------------------------


def test_governed_knobs_go_back_to_the_governors_found(nx):
    tree, _, root = nx
    act = open_sysfs_actuator(root)
    found = (policy_state(tree, 2), node_state(tree, NX_GPU))
    act.apply({CPU: 115.2e6, GPU: 114.75e6})
    act.apply({}, governed=frozenset({CPU, GPU}))
    assert (policy_state(tree, 2), node_state(tree, NX_GPU)) == found
    act.apply({CPU: 1907.2e6}, governed=frozenset({GPU}))
    assert policy_state(tree, 2)[0] == "userspace"
    assert act.current()[CPU] == 1907.2e6


def test_hand_back_from_a_box_left_under_userspace_uses_a_dynamic_governor(nx):
    tree, _, root = nx
    for i in (0, 2, 4):
        put(tree, f"{POLICY.format(i)}/scaling_governor", "userspace")
    put(tree, f"{NX_GPU}/governor", "userspace")
    act = open_sysfs_actuator(root)
    act.apply({}, governed=frozenset({CPU, GPU}))
    assert policy_state(tree, 0)[0] == "schedutil"
    assert node_state(tree, NX_GPU)[0] == "nvhost_podgov"
    act.restore()  # restore is "as found", even if that was userspace
    assert policy_state(tree, 0)[0] == "userspace"
    assert node_state(tree, NX_GPU)[0] == "userspace"


# -- finding the GPU node ----------------------------------------------------------------


def test_gpu_node_is_found_by_scanning(tmp_path):
    orin_tree(tmp_path)
    root = SysfsRoot(tmp_path)
    (tmp_path / "sys/class/devfreq/15340000.vic").mkdir()  # another devfreq device
    assert find_devfreq_node(root) == "sys/class/devfreq/17000000.gpu"
    assert DevfreqActuator(root, "17000000.gpu").node.of_name == "gpu"
    with pytest.raises(DeviceError, match="no devfreq node"):
        DevfreqActuator(root, "17000000.ga10b")
    with pytest.raises(DeviceError, match="no GPU devfreq node"):
        DevfreqActuator(root, names=("gb10b",))


# -- composite and exit paths -------------------------------------------------------------


class Recorder(Actuator):
    """Counts restores; optionally fails them."""

    def __init__(self, name: str = "x", fail: bool = False) -> None:
        self.name, self.fail, self.restored = name, fail, 0

    def knobs(self) -> list[Knob]:
        return [Knob(self.name, (1.0, 2.0))]

    def apply(self, values: Mapping[str, float], governed: frozenset[str] = frozenset()) -> None:
        pass

    def current(self) -> dict[str, float]:
        return {self.name: 1.0}

    def restore(self) -> None:
        self.restored += 1
        if self.fail:
            raise DeviceError(f"{self.name} stuck")

    def warnings(self) -> list[str]:
        return [f"{self.name} warned"]


def test_composite_restores_all_even_when_one_fails():
    a, b, c = Recorder("a"), Recorder("b", fail=True), Recorder("c")
    comp = CompositeActuator([a, b, c], notes=["GPU absent"])
    assert [k.name for k in comp.knobs()] == ["a", "b", "c"]
    assert comp.warnings() == ["GPU absent", "a warned", "b warned", "c warned"]
    with pytest.raises(DeviceError, match="b stuck"):
        comp.restore()
    assert (a.restored, b.restored, c.restored) == (1, 1, 1)
    with pytest.raises(ValueError, match="more than one actuator"):
        CompositeActuator([Recorder("a"), Recorder("a")])


def test_restore_handlers_restore_then_chain_to_the_previous_handler():
    act = Recorder()
    seen: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        uninstall = install_restore_handlers(act, signals=(signal.SIGTERM,))
        signal.raise_signal(signal.SIGTERM)
        assert act.restored == 1 and seen == [signal.SIGTERM]
        uninstall()
        signal.raise_signal(signal.SIGTERM)
        assert act.restored == 1 and len(seen) == 2
    finally:
        signal.signal(signal.SIGTERM, original)


def test_restore_handlers_from_a_thread_use_atexit_only():
    act = Recorder()
    before = signal.getsignal(signal.SIGINT)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(install_restore_handlers(act)))
    t.start()
    t.join()
    assert signal.getsignal(signal.SIGINT) is before
    result[0]()  # type: ignore[operator]


# -- watchdog ----------------------------------------------------------------------------


def test_watchdog_restores_once_when_not_fed():
    now = [0.0]
    act = Recorder()
    dog = Watchdog(act, timeout_s=10, clock=lambda: now[0])
    now[0] = 9.9
    assert not dog.check() and act.restored == 0
    dog.feed()
    now[0] = 19.0
    assert not dog.check()
    now[0] = 20.0
    assert dog.check() and act.restored == 1
    now[0] = 100.0
    assert not dog.check() and act.restored == 1  # once per starvation
    dog.feed()
    now[0] = 111.0
    assert dog.check() and act.restored == 2 and dog.fired_count == 2


def test_watchdog_thread_hands_the_clocks_back(nx):
    tree, _, root = nx
    act = open_sysfs_actuator(root)
    act.apply({CPU: 115.2e6, GPU: 114.75e6})
    with Watchdog(act, timeout_s=0.05, poll_s=0.01) as dog:
        deadline = time.monotonic() + 2
        while dog.fired_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert dog.fired_count == 1
    assert policy_state(tree, 0) == ("schedutil", "1190400", "1420800")
