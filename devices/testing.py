"""Fake sysfs trees of real boards, for tests and examples that have no hardware.

Each ``*_tree(root)`` writes, under ``root``, the files the actuators, discovery and
meters read on that board, laid out as the board's kernel lays them out (symlinks
included), and returns ``root``. Point a ``SysfsRoot`` at it and the real code runs::

    from devices.testing import FakeKernel, xavier_nx_tree
    from devices.sysfs import SysfsRoot

    tree = xavier_nx_tree(tmp_dir)
    kernel = FakeKernel().deny("sys/class/devfreq/*/min_freq")
    root = SysfsRoot(tree, hook=kernel)

Plain files only store what is written, so ``FakeKernel`` (a ``SysfsHook``) adds the
kernel's cheap rules: it refuses unknown governors, ``scaling_setspeed`` outside the
``userspace`` governor and limits that would cross (EINVAL, as older kernels do); it clamps
and rounds ``scaling_setspeed`` up to the next table entry; it keeps the ``cur`` files in
step; and it simulates faults:

- ``deny(pattern, ...)``: writes answer EACCES. This is how permission-denied is tested:
  the suite runs as root, where ``chmod 0444`` does not stop a write. (``read_only()``
  does the chmod, which does stop a non-root user, for demonstrations as that user.)
- ``busy(pattern, times)``: the next ``times`` writes answer EBUSY.
- ``fail_reads(pattern, err)``: reads answer ``err``; EBUSY is what cpufreq answers for a
  policy whose CPUs are all offline (e.g. a 2-core power mode on a 6-core board); EMFILE is
  what every open answers once the process is out of file descriptors.
- ``fail_writes(pattern, err)``: writes answer ``err`` (EIO: a file that broke mid-serve).
- ``heal()``: forget every injected fault (the flood of connections has passed).

Patterns are ``fnmatch`` globs over paths relative to the root. ``writes`` logs every
accepted write in order, so tests can check write order.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from devices.boards import NANO, ORIN, XAVIER_NX

CPUFREQ = "sys/devices/system/cpu/cpufreq"

Rail = tuple[str, int, int]  # (label, millivolts, milliamps)


class FakeKernel:
    """A ``SysfsHook`` with the kernel's cheap rules and injectable faults (see module doc)."""

    def __init__(self, *, strict_limits: bool = True) -> None:
        #: True: crossing min/max is EINVAL (JetPack 4 era); False: stored as written.
        self.strict_limits = strict_limits
        self.denied: list[str] = []
        self.writes: list[tuple[str, str]] = []
        self._busy: dict[str, int] = {}
        self._read_faults: dict[str, int] = {}
        self._write_faults: dict[str, int] = {}

    def deny(self, *patterns: str) -> FakeKernel:
        """Writes to files matching any pattern fail with EACCES."""
        self.denied.extend(p.lstrip("/") for p in patterns)
        return self

    def busy(self, pattern: str, times: int) -> FakeKernel:
        """The next ``times`` writes to files matching ``pattern`` fail with EBUSY."""
        self._busy[pattern.lstrip("/")] = times
        return self

    def fail_reads(self, pattern: str, err: int = errno.EBUSY) -> FakeKernel:
        """Reads of files matching ``pattern`` fail with ``err`` (EBUSY: CPUs offline)."""
        self._read_faults[pattern.lstrip("/")] = err
        return self

    def fail_writes(self, pattern: str, err: int = errno.EIO) -> FakeKernel:
        """Writes to files matching ``pattern`` fail with ``err``."""
        self._write_faults[pattern.lstrip("/")] = err
        return self

    def heal(self) -> FakeKernel:
        """Forget every injected fault: refusals, busy files, failing reads and writes."""
        self.denied.clear()
        self._busy.clear()
        self._read_faults.clear()
        self._write_faults.clear()
        return self

    def before_read(self, path: Path, rel: str) -> None:
        for pattern, err in self._read_faults.items():
            if fnmatchcase(rel, pattern):
                raise OSError(err, os.strerror(err), str(path))

    def access_error(self, rel: str) -> int | None:
        return errno.EACCES if self._denies(rel) else None

    def before_write(self, path: Path, rel: str, text: str) -> str:
        if self._denies(rel):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        for pattern, err in self._write_faults.items():
            if fnmatchcase(rel, pattern):
                raise OSError(err, os.strerror(err), str(path))
        for pattern, left in self._busy.items():
            if left > 0 and fnmatchcase(rel, pattern):
                self._busy[pattern] = left - 1
                raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        text = text.strip()
        if path.name in ("scaling_governor", "governor"):
            text = self._governor(path, text)
        elif path.name in ("scaling_min_freq", "scaling_max_freq", "min_freq", "max_freq"):
            text = self._limit(path, text)
        elif path.name == "scaling_setspeed":
            text = self._setspeed(path, text)
        self.writes.append((rel, text))
        return text + "\n"

    def _denies(self, rel: str) -> bool:
        return any(fnmatchcase(rel, p) for p in self.denied)

    # -- kernel rules, per file name --------------------------------------------------

    def _governor(self, path: Path, text: str) -> str:
        scaling = path.name.startswith("scaling")
        listing = "scaling_available_governors" if scaling else "available_governors"
        available = _read(path.parent / listing).split()
        if text not in available:
            raise _einval(path)
        if path.name == "scaling_governor":
            setspeed = path.parent / "scaling_setspeed"
            if text == "userspace":
                _store(setspeed, _read(path.parent / "scaling_cur_freq"))
            else:
                _store(setspeed, "<unsupported>")
        return text

    def _limit(self, path: Path, text: str) -> str:
        value = _number(path, text)
        d = path.parent
        prefix = "scaling_" if path.name.startswith("scaling_") else ""
        low_path, high_path = d / f"{prefix}min_freq", d / f"{prefix}max_freq"
        low, high = int(_read(low_path)), int(_read(high_path))
        if path.name.endswith("min_freq"):
            low = value
        else:
            high = value
        if low > high:
            if self.strict_limits:
                raise _einval(path)
            return str(value)
        cur = d / f"{prefix}cur_freq"
        if cur.exists():
            _store(cur, str(min(max(int(_read(cur)), low), high)))
        return str(value)

    def _setspeed(self, path: Path, text: str) -> str:
        d = path.parent
        if _read(d / "scaling_governor") != "userspace":
            raise _einval(path)
        value = _number(path, text)
        value = min(
            max(value, int(_read(d / "scaling_min_freq"))), int(_read(d / "scaling_max_freq"))
        )
        table_path = d / "scaling_available_frequencies"
        if table_path.exists():
            table = sorted(int(v) for v in _read(table_path).split())
            value = next((f for f in table if f >= value), table[-1])
        _store(d / "scaling_cur_freq", str(value))
        return str(value)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _store(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _number(path: Path, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _einval(path) from None


def _einval(path: Path) -> OSError:
    return OSError(errno.EINVAL, "Invalid argument", str(path))


# -- building blocks ---------------------------------------------------------------------


def put(root: str | os.PathLike[str], rel: str, text: object, mode: int | None = None) -> Path:
    """Write one attribute file (creating its folders), newline-terminated as sysfs prints."""
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n")
    if mode is not None:
        path.chmod(mode)
    return path


def link(root: str | os.PathLike[str], rel: str, target_rel: str) -> None:
    """A relative symlink at ``rel`` pointing to ``target_rel`` (both relative to root)."""
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(os.path.relpath(Path(root) / target_rel, path.parent))


def read_only(root: str | os.PathLike[str], *rels: str) -> None:
    """chmod 0444: refuses writes from a non-root user only (root ignores file modes)."""
    for rel in rels:
        (Path(root) / rel).chmod(0o444)


def add_cpufreq_policy(
    root: str | os.PathLike[str],
    index: int,
    cpus: Sequence[int],
    *,
    table_khz: Sequence[int] | None,
    governors: str,
    governor: str,
    cpuinfo_khz: tuple[int, int] | None = None,
    limits_khz: tuple[int, int] | None = None,
    driver: str = "cpufreq-dt",
) -> None:
    """``policyN`` and its files; without a frequency table when ``table_khz`` is None."""
    d = f"{CPUFREQ}/policy{index}"
    if cpuinfo_khz is None:
        if not table_khz:
            raise ValueError("a policy without a table needs cpuinfo_khz")
        cpuinfo_khz = (min(table_khz), max(table_khz))
    low, high = limits_khz or cpuinfo_khz
    listed = " ".join(str(c) for c in cpus)
    files: dict[str, object] = {
        "affected_cpus": listed,
        "related_cpus": listed,
        "cpuinfo_min_freq": cpuinfo_khz[0],
        "cpuinfo_max_freq": cpuinfo_khz[1],
        "cpuinfo_transition_latency": 20000,
        "scaling_driver": driver,
        "scaling_available_governors": governors,
        "scaling_governor": governor,
        "scaling_min_freq": low,
        "scaling_max_freq": high,
        "scaling_cur_freq": high,
        "scaling_setspeed": high if governor == "userspace" else "<unsupported>",
    }
    if table_khz is not None:
        # Kernels print the table with a trailing space; acpi-cpufreq lists it descending.
        files["scaling_available_frequencies"] = " ".join(str(f) for f in table_khz) + " "
    for name, text in files.items():
        put(root, f"{d}/{name}", text)
    for cpu in cpus:
        link(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq", d)
        put(root, f"sys/devices/system/cpu/cpu{cpu}/online", 1)


def add_devfreq_node(
    root: str | os.PathLike[str],
    device_rel: str,
    of_node_rel: str | None,
    of_name: str,
    *,
    table_hz: Sequence[int],
    governors: str,
    governor: str,
    limits_hz: tuple[int, int] | None = None,
) -> str:
    """A devfreq node at ``<device_rel>/devfreq/<device name>``, linked from sys/class/devfreq.

    ``of_node_rel`` is the device-tree folder (under sys/firmware/devicetree/base) whose
    ``name`` the kernel shows as ``device/of_node/name``. Returns the class path.
    """
    name = device_rel.rsplit("/", 1)[-1]
    node = f"{device_rel}/devfreq/{name}"
    low, high = limits_hz or (min(table_hz), max(table_hz))
    files: dict[str, object] = {
        "available_frequencies": " ".join(str(f) for f in table_hz),
        "available_governors": governors,
        "governor": governor,
        "min_freq": low,
        "max_freq": high,
        "cur_freq": low,
        "target_freq": low,
        "polling_interval": 50,
    }
    for file_name, text in files.items():
        put(root, f"{node}/{file_name}", text)
    link(root, f"{node}/device", device_rel)
    put(root, f"{device_rel}/load", 0)
    if of_node_rel is not None:
        # Device-tree strings end in a NUL byte, which readers must strip.
        put(root, f"{of_node_rel}/name", f"{of_name}\x00")
        link(root, f"{device_rel}/of_node", of_node_rel)
    class_rel = f"sys/class/devfreq/{name}"
    link(root, class_rel, node)
    return class_rel


def add_ina3221_hwmon(
    root: str | os.PathLike[str], device: str, hwmon: str, rails: Sequence[Rail]
) -> str:
    """JetPack 5+ hwmon INA3221 at ``sys/bus/i2c/drivers/ina3221/<device>/hwmon/<hwmon>``.

    Channels 1..3 carry ``rails``; ``in4..in6`` are shunt voltages and ``in7`` their sum,
    which readers must skip. There is no power file: P = V x I.
    """
    d = f"sys/bus/i2c/drivers/ina3221/{device}/hwmon/{hwmon}"
    put(root, f"{d}/name", "ina3221")
    for c, (label, mv, ma) in enumerate(rails, start=1):
        put(root, f"{d}/in{c}_label", label)
        put(root, f"{d}/in{c}_enable", 1)
        put(root, f"{d}/in{c}_input", mv)
        put(root, f"{d}/curr{c}_input", ma)
        put(root, f"{d}/curr{c}_max", 6000)
        put(root, f"{d}/curr{c}_crit", 7000)
        put(root, f"{d}/in{c + 3}_input", ma * 5 // 1000)
    put(root, f"{d}/in7_label", "sum of shunt voltages")
    put(root, f"{d}/in7_input", sum(ma for _, _, ma in rails) * 5 // 1000)
    link(root, f"sys/class/hwmon/{hwmon}", d)
    return d


def add_ina3221_iio(
    root: str | os.PathLike[str], device: str, iio: str, rails: Sequence[Rail]
) -> str:
    """JetPack 4 iio INA3221 at ``sys/bus/i2c/drivers/ina3221x/<device>/<iio>`` (n = 0..2)."""
    d = f"sys/bus/i2c/drivers/ina3221x/{device}/{iio}"
    put(root, f"{d}/name", "ina3221x")
    for n, (label, mv, ma) in enumerate(rails):
        put(root, f"{d}/rail_name_{n}", label)
        put(root, f"{d}/in_voltage{n}_input", mv)
        put(root, f"{d}/in_current{n}_input", ma)
        put(root, f"{d}/in_power{n}_input", mv * ma // 1000)
    return d


def add_rapl_zone(
    root: str | os.PathLike[str],
    zone: str,
    name: str,
    energy_uj: int,
    max_energy_range_uj: int = 262143328850,
) -> str:
    """A powercap zone (``intel-rapl:0`` or ``intel-rapl:0:0``), ``energy_uj`` root-only (0400)."""
    parts = zone.split(":")
    device = "sys/devices/virtual/powercap/intel-rapl/" + ":".join(parts[:2])
    if len(parts) == 3:
        device += f"/{zone}"
    put(root, f"{device}/name", name)
    put(root, f"{device}/energy_uj", energy_uj, mode=0o400)
    put(root, f"{device}/max_energy_range_uj", max_energy_range_uj)
    put(root, f"{device}/enabled", 1)
    link(root, f"sys/class/powercap/{zone}", device)
    return f"sys/class/powercap/{zone}"


def _khz(hz: Iterable[int]) -> list[int]:
    return [f // 1000 for f in hz]


# -- boards ------------------------------------------------------------------------------

JETSON_DEVFREQ_GOVERNORS = (
    "wmark_active wmark_simple nvhost_podgov userspace performance simple_ondemand"
)


def xavier_nx_tree(
    root: str | os.PathLike[str], *, gpu_limits_hz: tuple[int, int] | None = None
) -> Path:
    """Jetson Xavier NX: Carmel policies 0/2/4 capped by a power mode, gv11b, hwmon INA3221.

    ``gpu_limits_hz`` caps the GPU too (default: its whole table), so that neither a pinned
    value nor the hardware range can pass for the GPU's originals.
    """
    for index in XAVIER_NX.cpu_policies:
        add_cpufreq_policy(
            root,
            index,
            (index, index + 1),
            table_khz=_khz(XAVIER_NX.cpu_freqs_hz),
            governors="interactive schedutil userspace performance",
            governor="schedutil",
            limits_khz=(1190400, 1420800),
            driver="tegra194",
        )
    add_devfreq_node(
        root,
        "sys/devices/17000000.gv11b",
        "sys/firmware/devicetree/base/gv11b@17000000",
        "gv11b",
        table_hz=XAVIER_NX.gpu_freqs_hz,
        governors=JETSON_DEVFREQ_GOVERNORS,
        governor="nvhost_podgov",
        limits_hz=gpu_limits_hz,
    )
    add_ina3221_hwmon(
        root,
        "7-0040",
        "hwmon3",
        [("VDD_IN", 5080, 1350), ("VDD_CPU_GPU_CV", 5072, 420), ("VDD_SOC", 5080, 300)],
    )
    return Path(root)


def nano_tree(root: str | os.PathLike[str]) -> Path:
    """Jetson Nano (JetPack 4): one A57 policy, 57000000.gpu, iio INA3221 at 6-0040."""
    add_cpufreq_policy(
        root,
        0,
        (0, 1, 2, 3),
        table_khz=_khz(NANO.cpu_freqs_hz),
        governors="interactive conservative ondemand userspace powersave performance schedutil",
        governor="schedutil",
        driver="tegra210",
    )
    add_devfreq_node(
        root,
        "sys/devices/57000000.gpu",
        "sys/firmware/devicetree/base/gpu@57000000",
        "gpu",
        table_hz=NANO.gpu_freqs_hz,
        governors=JETSON_DEVFREQ_GOVERNORS,
        governor="nvhost_podgov",
    )
    add_ina3221_iio(
        root,
        "6-0040",
        "iio:device0",
        [("POM_5V_IN", 4984, 1200), ("POM_5V_GPU", 4984, 80), ("POM_5V_CPU", 4984, 240)],
    )
    return Path(root)


def orin_tree(root: str | os.PathLike[str]) -> Path:
    """Jetson AGX Orin (JetPack 6): policies 0/4/8, 17000000.gpu, hwmon at 1-0040 and 1-0041."""
    for index in ORIN.cpu_policies:
        add_cpufreq_policy(
            root,
            index,
            tuple(range(index, index + 4)),
            table_khz=_khz(ORIN.cpu_freqs_hz),
            governors="userspace ondemand performance schedutil",
            governor="schedutil",
            driver="tegra194",
        )
    add_devfreq_node(
        root,
        "sys/devices/platform/bus@0/17000000.gpu",
        "sys/firmware/devicetree/base/bus@0/gpu@17000000",
        "gpu",
        table_hz=ORIN.gpu_freqs_hz,
        governors="nvhost_podgov userspace performance simple_ondemand",
        governor="nvhost_podgov",
    )
    add_ina3221_hwmon(
        root,
        "1-0040",
        "hwmon1",
        [("VDD_GPU_SOC", 5008, 1600), ("VDD_CPU_CV", 5008, 900), ("VIN_SYS_5V0", 5000, 700)],
    )
    add_ina3221_hwmon(
        root, "1-0041", "hwmon2", [("VDDQ_VDD2_1V8AO", 5000, 300), ("NC", 0, 0), ("NC", 0, 0)]
    )
    return Path(root)


_ACPI_TABLE_KHZ = (
    3401000, 3400000, 3200000, 3000000, 2800000, 2600000, 2400000, 2200000, 2000000,
    1800000, 1600000, 1400000, 1200000, 1000000, 800000,
)  # fmt: skip


def x86_tree(root: str | os.PathLike[str], userspace: bool = True, cpus: int = 4) -> Path:
    """A generic x86 box with RAPL and no devfreq GPU.

    ``userspace=True``: acpi-cpufreq, a frequency table (descending, turbo as max + 1 MHz)
    and the userspace governor. ``userspace=False``: intel_pstate in active mode, no table,
    only ``performance`` / ``powersave`` (min = max pinning is the only way).
    """
    for cpu in range(cpus):
        if userspace:
            add_cpufreq_policy(
                root,
                cpu,
                (cpu,),
                table_khz=_ACPI_TABLE_KHZ,
                governors="conservative ondemand userspace powersave performance schedutil",
                governor="schedutil",
                driver="acpi-cpufreq",
            )
        else:
            add_cpufreq_policy(
                root,
                cpu,
                (cpu,),
                table_khz=None,
                governors="performance powersave",
                governor="powersave",
                cpuinfo_khz=(800000, 4200000),
                driver="intel_pstate",
            )
            put(root, f"{CPUFREQ}/policy{cpu}/energy_performance_preference", "balance_performance")
    if not userspace:
        put(root, "sys/devices/system/cpu/intel_pstate/status", "active")
    (Path(root) / "sys/class/devfreq").mkdir(parents=True, exist_ok=True)
    add_rapl_zone(root, "intel-rapl:0", "package-0", 123456789)
    add_rapl_zone(root, "intel-rapl:0:0", "core", 45678901)
    return Path(root)
