"""Device twins fitted to measured Jetson data (MobileNet served by NVIDIA Triton).

What is measured and what is modelled
-------------------------------------
The coefficients in ``twins/data/twin_coefficients.json`` are fitted by
``scripts/fit_twin.py`` to public measurements (emwjacobson/JetsonEfficiencyTesting, commit
2b4408066d65e2fd39921097f0a15ffc27d08040): MobileNet under Triton at concurrency 1 on a
Jetson AGX Xavier and a Jetson Nano, every GPU frequency step x batch sizes 1..32, with
whole-board wall power. In those runs the CPU was pinned at its maximum, so:

- measured: how batch time and board power depend on the GPU frequency and the batch size
  (AGX Xavier, Nano), the split of each request's time between host-side work and GPU
  inference (Triton's own time breakdown), and the idle power (power logs before the runs);
- modelled, not measured: everything about the CPU frequency. Host-side time scales with
  ``f_cpu_ref / f_cpu`` and the CPU's share of active power grows with ``f * V(f)^2``; the
  split of the non-GPU active power between CPU and the rest of the board is a stated
  assumption (``cpu_w`` / ``soc_w``);
- derived, not measured: the Xavier NX (from the AGX fit, scaled by GPU cores and clocks)
  and the Orin's frequency response (its batch response at MAXN is fitted to five
  dream-lab/pagoda MobileNet figures). Each board's ``basis`` in the JSON says which.

The model
---------
Per batch of ``b`` items at CPU/GPU frequencies ``fc``/``fg`` (ratios to the reference
clocks the data was taken at: ``rc = fc / cpu_ref_hz``, ``rg = fg / gpu_ref_hz``)::

    host   H = (host_s0 + host_s1 * b) / rc                         CPU-side work
    device D = fixed_s0 + fixed_s1 * b + (gpu_s0 + gpu_s1 * b**batch_exponent) / rg
    time   t = (H**overlap + D**overlap) ** (1 / overlap)

``D`` has a part clocked by the GPU (``1/rg``) and a part that is not (memory-bound work,
launches): fitting both is what makes time flatten out at high GPU clocks as measured.
``batch_exponent`` < 1 is the GPU filling up with larger batches. ``overlap`` = 1 means host
and GPU work run one after the other (Triton at concurrency 1, as its time breakdown
shows); larger values mean host work hides behind GPU work (PyTorch's asynchronous kernel
launches, as the Orin figures suggest).

Whole-board power at activity ``busy`` (fraction of time serving batches)::

    P = idle_w + busy * (soc_w + cpu_w * rc * V(rc, cpu_v_min)**2
                         + (D / t) * b / (b + occupancy_half_batch) * gpu_w * rg * V(rg, gpu_v_min)**2)
    V(r, v_min) = v_min + (1 - v_min) * r        (relative voltage; dynamic power ~ f V^2)

The GPU term is weighted by the share of the batch time the GPU runs (``D / t``) and by
its occupancy, which grows with the batch (measured: at the AGX's top clock, batch 1 draws
27 W and batch 32 draws 39 W).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from devices.boards import BoardProfile, get_profile
from ecoserve.core.knobs import CPU, GPU, Knob
from twins.base import DeviceTwin
from twins.profile_table import DEFAULT_POWER_BATCH, TableTwin

COEFFICIENTS_FILE = "twin_coefficients.json"


@dataclass(frozen=True)
class TwinParams:
    """The coefficients of one board's model (units: seconds, watts, hertz)."""

    cpu_ref_hz: float
    gpu_ref_hz: float
    host_s0: float
    host_s1: float
    fixed_s0: float
    fixed_s1: float
    gpu_s0: float
    gpu_s1: float
    batch_exponent: float
    overlap: float
    idle_w: float
    soc_w: float
    cpu_w: float
    gpu_w: float
    occupancy_half_batch: float
    gpu_v_min: float
    cpu_v_min: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TwinParams:
        """Parameters from a JSON object; names what is missing or unknown."""
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        unknown = set(data) - names
        if missing or unknown:
            raise ValueError(
                f"twin parameters: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return cls(**{k: float(data[k]) for k in names})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def relative_voltage(ratio: Any, v_min: float) -> Any:
    """Voltage relative to the reference clock's, linear in frequency from ``v_min``."""
    return v_min + (1.0 - v_min) * ratio


def time_parts(p: TwinParams, batch: Any, cpu_hz: Any, gpu_hz: Any) -> tuple[Any, Any, Any]:
    """``(host, device, total)`` seconds of one batch, for numbers or numpy arrays.

    The fitting script calls this same function, so the runtime twin and the reported
    fit error can never disagree about the model. Plain arithmetic (no array conversion)
    keeps a scalar call cheap for the simulator; pass arrays to evaluate a whole grid.
    """
    b = batch
    rc = cpu_hz / p.cpu_ref_hz
    rg = gpu_hz / p.gpu_ref_hz
    host = (p.host_s0 + p.host_s1 * b) / rc
    device = p.fixed_s0 + p.fixed_s1 * b + (p.gpu_s0 + p.gpu_s1 * b**p.batch_exponent) / rg
    n = p.overlap
    total = host + device if n == 1.0 else (host**n + device**n) ** (1.0 / n)
    return host, device, total


def active_power(p: TwinParams, batch: Any, cpu_hz: Any, gpu_hz: Any) -> Any:
    """Whole-board watts while batches of ``batch`` run back to back (``busy`` = 1).

    Numbers or numpy arrays, like ``time_parts``.
    """
    b = batch
    rc = cpu_hz / p.cpu_ref_hz
    rg = gpu_hz / p.gpu_ref_hz
    _, device, total = time_parts(p, b, cpu_hz, gpu_hz)
    duty = device / total
    occupancy = b / (b + p.occupancy_half_batch)
    cpu = p.cpu_w * rc * relative_voltage(rc, p.cpu_v_min) ** 2
    gpu = p.gpu_w * rg * relative_voltage(rg, p.gpu_v_min) ** 2
    return p.idle_w + p.soc_w + cpu + duty * occupancy * gpu


@dataclass
class FittedTwin(DeviceTwin):
    """A board's twin from fitted (or derived) coefficients.

    ``noise`` is the relative std-dev applied to sampled batch times and ``power_noise`` to
    sampled power; by default both are the residual spread of the fit, i.e. what a
    measurement at one setting scattered around the model.
    """

    profile: BoardProfile
    params: TwinParams
    noise: float = 0.0
    power_noise: float = 0.0
    name: str = "fitted"
    basis: str = ""
    max_batch: int = 16

    def knobs(self) -> list[Knob]:
        return self.profile.knobs()

    def _freqs(self, freqs: Mapping[str, float]) -> tuple[float, float]:
        """CPU and GPU Hz, defaulting to the board's maximum for a knob not given."""
        fc = float(freqs.get(CPU, self.profile.cpu_freqs_hz[-1]))
        fg = float(freqs.get(GPU, self.profile.gpu_freqs_hz[-1]))
        if fc <= 0 or fg <= 0:
            raise ValueError(f"frequencies must be > 0 Hz, got cpu={fc}, gpu={fg}")
        return fc, fg

    def batch_time(self, batch: int, freqs: Mapping[str, float]) -> float:
        if batch < 1:
            raise ValueError(f"batch size must be >= 1, got {batch}")
        fc, fg = self._freqs(freqs)
        return float(time_parts(self.params, batch, fc, fg)[2])

    def power(self, freqs: Mapping[str, float], busy: float, *, batch: int | None = None) -> float:
        """Watts at activity ``busy``; ``batch`` is the batch running while busy.

        Board power depends on the batch (a fuller GPU draws more); callers that know it
        should pass it. Without it, ``DEFAULT_POWER_BATCH`` is assumed.
        """
        if not 0.0 <= busy <= 1.0:
            raise ValueError(f"busy must be within 0..1, got {busy}")
        fc, fg = self._freqs(freqs)
        b = DEFAULT_POWER_BATCH if batch is None else batch
        active = float(active_power(self.params, b, fc, fg))
        return self.params.idle_w + busy * (active - self.params.idle_w)

    def batch_energy(self, batch: int, freqs: Mapping[str, float]) -> float:
        """Joules of one batch run at these frequencies (board busy for its whole time)."""
        return self.power(freqs, 1.0, batch=batch) * self.batch_time(batch, freqs)

    def idle_power(self) -> float:
        """Board watts with nothing running."""
        return self.params.idle_w


def coefficients_path() -> Path:
    """Where the installed package keeps the fitted coefficients."""
    return Path(str(resources.files("twins").joinpath("data", COEFFICIENTS_FILE)))


def load_coefficients(path: str | Path | None = None) -> dict[str, Any]:
    """The coefficients document (boards, sources, fit errors) as written by the fit script."""
    target = Path(path) if path is not None else coefficients_path()
    with target.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or "boards" not in data:
        raise ValueError(f"{target}: not a twin coefficients file (no 'boards' object)")
    return data


def fitted_boards(coefficients: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Board names that have coefficients."""
    data = coefficients if coefficients is not None else load_coefficients()
    return tuple(sorted(data["boards"]))


def twin_from_coefficients(
    board: str, coefficients: Mapping[str, Any], noise: float | None = None
) -> FittedTwin:
    """The twin of ``board`` built from a coefficients document."""
    boards = coefficients["boards"]
    if board not in boards:
        raise KeyError(f"no fitted twin for {board!r}; fitted boards: {', '.join(sorted(boards))}")
    entry = boards[board]
    fitted_noise = entry.get("noise", {})
    time_noise = float(fitted_noise.get("time_rel_std", 0.0)) if noise is None else noise
    power_noise = float(fitted_noise.get("power_rel_std", 0.0)) if noise is None else noise
    if not (math.isfinite(time_noise) and time_noise >= 0):
        raise ValueError(f"noise must be a finite relative std-dev >= 0, got {noise!r}")
    return FittedTwin(
        profile=get_profile(entry.get("profile", board)),
        params=TwinParams.from_dict(entry["params"]),
        noise=time_noise,
        power_noise=power_noise,
        name=f"fitted:{board}",
        basis=str(entry.get("basis", "")),
        max_batch=int(entry.get("max_batch", 16)),
    )


def load_twin(name: str, noise: float | None = None) -> DeviceTwin:
    """The twin for a board name or a profile table.

    ``name`` is a fitted board (``xavier-nx``, ``agx-xavier``, ``nano``, ``orin``) or the
    path of a profile table CSV written by ``ecoserve profile`` (see
    ``twins.profile_table``). ``noise`` overrides the relative std-dev of sampled times
    and power; ``None`` keeps the fit's residual spread (or the table's own figure).
    """
    coefficients = load_coefficients()
    if name in coefficients["boards"]:
        return twin_from_coefficients(name, coefficients, noise)
    path = Path(name)
    if path.suffix.lower() == ".csv" or path.is_file():
        return TableTwin.from_path(path, noise=noise)
    raise KeyError(
        f"no twin {name!r}: fitted boards are {', '.join(fitted_boards(coefficients))}, "
        f"or give the path of a profile table CSV"
    )
