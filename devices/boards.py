"""Board profiles: frequency tables and where the GPU clock lives.

The tables are the operating points the kernels of these boards expose
(``scaling_available_frequencies`` for the CPU, ``available_frequencies`` of the GPU's
devfreq node). On a real board the sysfs actuators read the tables from the tree; these
copies let the virtual device and the twin offer the same search space with no hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecoserve.core.knobs import CPU, GPU, Knob


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    cpu_freqs_hz: tuple[int, ...]
    gpu_freqs_hz: tuple[int, ...]
    #: devfreq node names of the GPU (matched against ``device/of_node/name`` and the node name).
    gpu_node_names: tuple[str, ...] = ("gv11b", "gp10b", "ga10b", "gb10b", "gpu")
    #: CPU policies nvpmodel writes (first CPU of each cluster).
    cpu_policies: tuple[int, ...] = (0,)

    def knobs(self) -> list[Knob]:
        return [
            Knob(CPU, tuple(float(f) for f in self.cpu_freqs_hz)),
            Knob(GPU, tuple(float(f) for f in self.gpu_freqs_hz)),
        ]


def _khz(*values: int) -> tuple[int, ...]:
    return tuple(v * 1000 for v in values)


_CARMEL_KHZ = (
    115200,
    192000,
    268800,
    345600,
    422400,
    499200,
    576000,
    652800,
    729600,
    806400,
    883200,
    960000,
    1036800,
    1113600,
    1190400,
    1267200,
    1344000,
    1420800,
    1497600,
    1574400,
    1651200,
    1728000,
    1804800,
    1881600,
    1907200,
)

XAVIER_NX = BoardProfile(
    name="xavier-nx",
    description="NVIDIA Jetson Xavier NX (6-core Carmel, 384-core Volta gv11b)",
    cpu_freqs_hz=_khz(*_CARMEL_KHZ),
    gpu_freqs_hz=(
        114750000,
        204000000,
        306000000,
        408000000,
        510000000,
        599250000,
        701250000,
        752250000,
        803250000,
        854250000,
        905250000,
        956250000,
        1032750000,
        1083750000,
        1109250000,
    ),
    gpu_node_names=("gv11b",),
    cpu_policies=(0, 2, 4),
)

AGX_XAVIER = BoardProfile(
    name="agx-xavier",
    description="NVIDIA Jetson AGX Xavier (8-core Carmel, 512-core Volta gv11b)",
    cpu_freqs_hz=_khz(*_CARMEL_KHZ, 1958400, 2035200, 2112000, 2188800, 2265600),
    gpu_freqs_hz=(
        114750000,
        216750000,
        318750000,
        420750000,
        522750000,
        624750000,
        675750000,
        828750000,
        905250000,
        1032750000,
        1198500000,
        1236750000,
        1338750000,
        1377000000,
    ),
    gpu_node_names=("gv11b",),
    cpu_policies=(0, 2, 4, 6),
)

ORIN = BoardProfile(
    name="orin",
    description="NVIDIA Jetson AGX Orin (12-core Cortex-A78AE, Ampere ga10b)",
    # Carmel's operating points up to 1881.6 MHz, then Orin's own top steps.
    cpu_freqs_hz=_khz(*_CARMEL_KHZ[:-1], 1958400, 2035200, 2112000, 2188800, 2201600),
    gpu_freqs_hz=(
        306000000,
        408000000,
        510000000,
        612000000,
        714000000,
        816000000,
        918000000,
        1020000000,
        1122000000,
        1224000000,
        1300500000,
    ),
    gpu_node_names=("ga10b", "gpu"),
    cpu_policies=(0, 4, 8),
)

NANO = BoardProfile(
    name="nano",
    description="NVIDIA Jetson Nano (4-core Cortex-A57, Maxwell gm20b)",
    cpu_freqs_hz=_khz(
        102000,
        204000,
        307200,
        403200,
        518400,
        614400,
        710400,
        825600,
        921600,
        1036800,
        1132800,
        1224000,
        1326000,
        1428000,
        1479000,
    ),
    gpu_freqs_hz=(
        76800000,
        153600000,
        230400000,
        307200000,
        384000000,
        460800000,
        537600000,
        614400000,
        691200000,
        768000000,
        844800000,
        921600000,
    ),
    gpu_node_names=("gpu", "57000000.gpu"),
    cpu_policies=(0,),
)

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (XAVIER_NX, AGX_XAVIER, ORIN, NANO)}


def get_profile(name: str) -> BoardProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(
            f"unknown board {name!r}; known boards: {', '.join(sorted(PROFILES))}"
        ) from None
