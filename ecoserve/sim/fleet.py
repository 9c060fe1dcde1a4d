"""The fleet in virtual time: one arrival series, many boards, one fleet policy.

Every control period the loop tells the policy (``ecoserve.core.fleet``, the same object the
Ray Serve ingress drives) the arrival rate it saw and each board's ongoing requests, and
carries out its plan: boards woken serve once their wake delay has passed, parked boards
draw their parked power, and the period's traffic is split by the plan's weights. What each
serving board does with the rate it is sent comes from its :class:`BoardModel` (its own
engine and tuner, measured on its twin, see ``ecoserve.sim.board_model``).

Fleet energy is the power bill: every board's draw over the whole run, serving, idle,
waking and parked. Requests a board cannot take (its queue full) count as rejected and as
SLO violations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ecoserve.core.fleet import BoardSpec, BoardState, FleetObservation, FleetPolicy
from ecoserve.sim.board_model import LATENCY_EDGES, BoardModel, histogram_quantile
from traces.rates import RateSeries


@dataclass(frozen=True)
class Bill:
    """What the fleet's power bill counts beyond its boards' serving and idle draw.

    The one table of defaults; each is a stated assumption, none is measured here, so each is
    an option of the fleet replay and swept in ``benchmarks/bench_fleet_bill.py``:

    - ``ingress_w`` 40 W: the host that runs the ingress (and the Ray head) with the boards'
      switch, always on, so counted in every policy's energy alike. Assumed: a small x86 host
      at light load plus an unmanaged switch; the sweep covers 20-100 W.
    - ``off_w`` 0.5 W: a powered-off board's draw, a switched supply's standby. Assumed.
    - ``wake_s`` 45 s: power-on to a serving engine (boot, model load, saved tuner state
      restored), the figure the fleet replay has assumed since its first version. Assumed; it
      leaves out a Ray node's join and replica placement, hence the sweep to 180 s.

    ``off_w_by_kind`` and ``wake_s_by_kind`` override either per board kind, as
    ``(kind, value)`` pairs.
    """

    ingress_w: float = 40.0
    off_w: float = 0.5
    wake_s: float = 45.0
    off_w_by_kind: tuple[tuple[str, float], ...] = ()
    wake_s_by_kind: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ingress_w) and self.ingress_w >= 0):
            raise ValueError(
                f"ingress host power must be >= 0 W, got {self.ingress_w:g} "
                "(0 leaves the host out of the bill)"
            )
        for kind, w in (("every kind", self.off_w), *self.off_w_by_kind):
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"a powered-off board's draw ({kind}) must be >= 0 W, got {w:g}")
        for kind, s in (("every kind", self.wake_s), *self.wake_s_by_kind):
            if not (math.isfinite(s) and s > 0):
                raise ValueError(
                    f"wake-to-serving time of a powered-off board ({kind}) must be > 0 s, got "
                    f"{s:g}: a board that is off must boot; for boards that answer at once use "
                    "parking at min-clocks"
                )

    def off_w_of(self, kind: str) -> float:
        return dict(self.off_w_by_kind).get(kind, self.off_w)

    def wake_s_of(self, kind: str) -> float:
        return dict(self.wake_s_by_kind).get(kind, self.wake_s)

    def check_kinds(self, kinds: Sequence[str]) -> None:
        """A per-kind override naming no board kind of the fleet is a typo: say so."""
        for what, pairs in (("parked draw", self.off_w_by_kind), ("wake", self.wake_s_by_kind)):
            stray = sorted({k for k, _ in pairs} - set(kinds))
            if stray:
                raise ValueError(
                    f"{what} given for {', '.join(stray)}, not in the fleet "
                    f"({', '.join(sorted(kinds))})"
                )

    def describe(self) -> str:
        def per_kind(default: float, pairs: tuple[tuple[str, float], ...], unit: str) -> str:
            extra = "".join(f", {k} {v:g} {unit}" for k, v in pairs)
            return f"{default:g} {unit}{extra}"

        return (
            f"ingress host {self.ingress_w:g} W always on; powered-off board "
            f"{per_kind(self.off_w, self.off_w_by_kind, 'W')}, wake to serving "
            f"{per_kind(self.wake_s, self.wake_s_by_kind, 's')} (all assumed, see Bill)"
        )


def parse_per_kind(text: str, what: str) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """``"2"``, ``"orin:2,nano:0.5"`` or ``"1,nano:3"``: a value for every kind, and overrides.

    ``what`` names the option in the error.
    """
    default: float | None = None
    pairs: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, value = part.rpartition(":")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(
                f"{what}: {part!r} is not a number or KIND:NUMBER (e.g. 2 or orin:2,nano:0.5)"
            ) from None
        kind = kind.strip()
        if sep and not kind:
            raise ValueError(f"{what}: {part!r} names no kind (e.g. orin:2)")
        if sep and any(k == kind for k, _ in pairs):
            raise ValueError(f"{what}: {kind!r} is given twice; give each kind once")
        if not sep and default is not None:
            raise ValueError(f"{what}: two values for every kind ({default:g} and {number:g})")
        if sep:
            pairs.append((kind, number))
        else:
            default = number
    if default is None and not pairs:
        raise ValueError(f"{what} is empty; give a number or KIND:NUMBER,...")
    return default, tuple(pairs)


def make_bill(
    ingress_w: float | None = None, parked_w: str | None = None, wake_s: str | None = None
) -> Bill:
    """A :class:`Bill` from the fleet replay's options, the defaults where one is not given."""
    base = Bill()
    off_w, off_pairs = (
        parse_per_kind(parked_w, "--parked-w") if parked_w is not None else (None, ())
    )
    wake, wake_pairs = parse_per_kind(wake_s, "--wake-s") if wake_s is not None else (None, ())
    return Bill(
        ingress_w=base.ingress_w if ingress_w is None else ingress_w,
        off_w=base.off_w if off_w is None else off_w,
        wake_s=base.wake_s if wake is None else wake,
        off_w_by_kind=off_pairs,
        wake_s_by_kind=wake_pairs,
    )


@dataclass(frozen=True)
class Parking:
    """What a parked board draws and how long it takes to serve again, per board kind.

    ``mode`` is ``off`` (an operator's power-off command) or ``min-clocks``. The figures are
    stated assumptions unless a board kind's entry says it was measured.
    """

    mode: str
    parked_w: Mapping[str, float]
    wake_s: Mapping[str, float]
    waking_w: Mapping[str, float]
    basis: str = "assumed"


#: Stated assumption: re-applying tuned clocks to a board parked at minimum clocks.
MIN_CLOCKS_WAKE_S = 1.0


def parking(mode: str, models: Mapping[str, BoardModel], bill: Bill | None = None) -> Parking:
    """The parking figures for ``mode`` over these board kinds.

    Powered off: the bill's draw and wake time (:class:`Bill`, its defaults' sources named
    there); while booting a board draws its idle power (assumed). At minimum clocks a board
    draws its twin's idle power at its lowest clocks; the fitted twins' idle draw was
    measured at one clock setting, so this equals their idle draw.
    """
    bill = bill or Bill()
    if mode == "off":
        return Parking(
            mode,
            {k: bill.off_w_of(k) for k in models},
            {k: bill.wake_s_of(k) for k in models},
            {k: m.idle_w for k, m in models.items()},
            basis=f"{bill.describe()}; idle draw while booting (assumed)",
        )
    if mode == "min-clocks":
        return Parking(
            mode,
            {k: m.min_clock_idle_w for k, m in models.items()},
            {k: MIN_CLOCKS_WAKE_S for k in models},
            {k: m.min_clock_idle_w for k, m in models.items()},
            basis="twin idle draw at minimum clocks; "
            f"{MIN_CLOCKS_WAKE_S:g} s to re-apply clocks (assumed)",
        )
    raise ValueError(f"unknown parking mode {mode!r}: use 'off' or 'min-clocks'")


@dataclass(frozen=True)
class FleetBoard:
    name: str
    kind: str


@dataclass
class FleetRun:
    """What one policy did over the series."""

    policy: str
    tuner: str
    parking: str
    energy_j: float
    offered: float
    served: float
    rejected: float
    histogram: np.ndarray
    slo_s: float
    period_s: float
    awake: np.ndarray
    serving: np.ndarray
    wall_s: float
    per_kind_energy_j: dict[str, float] = field(default_factory=dict)
    #: Per control period and board: traffic share, and state (0 serving, 1 waking,
    #: 2 parked, 3 dead); what a direct replay of the same decisions needs.
    weights: np.ndarray | None = None
    states: np.ndarray | None = None
    #: What sets this run apart from another of the same policy (e.g. Ray's target).
    variant: str = ""
    #: The ingress host's draw over the run (always on); ``energy_j`` is the boards' alone,
    #: comparable with figures from before the host was billed.
    ingress_w: float = 0.0
    duration_s: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.policy} {self.variant}" if self.variant else self.policy

    @property
    def key(self) -> str:
        return f"{self.label}/{self.parking}"

    @property
    def joules_per_request(self) -> float:
        """The boards' energy per request served (the ingress host left out)."""
        return self.energy_j / self.served if self.served else math.inf

    @property
    def ingress_j(self) -> float:
        return self.ingress_w * self.duration_s

    @property
    def bill_j(self) -> float:
        """The whole bill: every board's draw and the ingress host's."""
        return self.energy_j + self.ingress_j

    @property
    def bill_joules_per_request(self) -> float:
        return self.bill_j / self.served if self.served else math.inf

    def latency_quantile_s(self, q: float) -> float:
        """Percentile over offered requests, a rejected one counted as never answered."""
        answered = float(self.histogram.sum())
        total = answered + self.rejected
        if answered <= 0:
            return math.nan
        position = q / 100.0 * total
        if position > answered:
            return math.inf
        return histogram_quantile(self.histogram, 100.0 * position / answered)

    @property
    def slo_violations(self) -> float:
        """Share of offered requests answered later than the SLO, or not at all."""
        late = self.histogram[LATENCY_EDGES[:-1] >= self.slo_s].sum()
        i = int(np.searchsorted(LATENCY_EDGES, self.slo_s)) - 1
        if 0 <= i < len(self.histogram):  # the bin that straddles the SLO, log-interpolated
            lo, hi = LATENCY_EDGES[i], LATENCY_EDGES[i + 1]
            late += self.histogram[i] * math.log(hi / self.slo_s) / math.log(hi / lo)
        return float((late + self.rejected) / self.offered) if self.offered else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "variant": self.variant,
            "tuner": self.tuner,
            "parking": self.parking,
            "energy_j": self.energy_j,
            "requests": self.offered,
            "served": self.served,
            "rejected": self.rejected,
            "joules_per_request": self.joules_per_request,
            "ingress_w": self.ingress_w,
            "ingress_j": self.ingress_j,
            "bill_j": self.bill_j,
            "bill_joules_per_request": self.bill_joules_per_request,
            "p50_ms": self.latency_quantile_s(50) * 1e3,
            "p99_ms": self.latency_quantile_s(99) * 1e3,
            "slo_ms": self.slo_s * 1e3,
            "slo_violations": self.slo_violations,
            "mean_boards_awake": float(self.awake.mean()),
            "max_boards_awake": int(self.awake.max()),
            "wall_s": self.wall_s,
            "per_kind_energy_j": self.per_kind_energy_j,
        }


def board_specs(
    boards: Sequence[FleetBoard], models: Mapping[str, BoardModel], park: Parking, slo_s: float
) -> list[BoardSpec]:
    """What the policy is told of each board: tuned capacity within the SLO, J/request there."""
    out = []
    for b in boards:
        m = models[b.kind]
        cap = m.capacity(slo_s)
        if cap <= 0:
            raise ValueError(
                f"a {b.kind} board meets no p99 within {slo_s * 1e3:g} ms at any measured "
                "rate; raise the SLO"
            )
        out.append(BoardSpec(b.name, b.kind, cap, float(m.power(cap)) / cap, park.wake_s[b.kind]))
    return out


def peak_lookup(rates: np.ndarray, period_s: float) -> Callable[[float, float], float]:
    """``peak(t0, t1)``: the highest period rate in ``[t0, t1]`` (for the oracle)."""

    def peak(t0: float, t1: float) -> float:
        i0 = max(0, int(t0 // period_s))
        i1 = min(len(rates), int(math.ceil(t1 / period_s)) + 1)
        return float(rates[i0:i1].max()) if i1 > i0 else 0.0

    return peak


def scale_load(series: RateSeries, k: float) -> RateSeries:
    """``k`` times the arrivals of every step over the same clock (``--scale-load``).

    Unlike rescaling a trace's mean rate by compressing its times, the day stays a day: only
    the load on it is multiplied, so a fleet sized for one peak can be tried at ``k`` peaks.
    """
    if not (k > 0 and math.isfinite(k)):
        raise ValueError(f"--scale-load must be > 0, got {k}")
    if k == 1:
        return series
    return RateSeries(f"{series.name} x{k:g}", series.step_s, series.counts * k, series.source)


def period_rates(series: RateSeries, period_s: float) -> tuple[np.ndarray, int]:
    """Mean rate per control period, and the number of series steps in one period."""
    per = max(1, int(round(period_s / series.step_s)))
    n = len(series.counts) // per
    if n < 1:
        raise ValueError(f"the series ({series.duration_s:g} s) is shorter than one period")
    counts = series.counts[: n * per].reshape(n, per)
    return counts.sum(axis=1) / (per * series.step_s), per


def run_fleet(
    policy: FleetPolicy,
    boards: Sequence[FleetBoard],
    models: Mapping[str, BoardModel],
    series: RateSeries,
    park: Parking,
    *,
    slo_s: float,
    period_s: float = 5.0,
    label: str | None = None,
    variant: str = "",
    ingress_w: float = 0.0,
) -> FleetRun:
    """Drive ``policy`` over ``series``; every board's share read from its kind's model.

    ``ingress_w`` is the ingress host's draw, billed beside the boards' (:class:`Bill`).
    """
    if not (math.isfinite(ingress_w) and ingress_w >= 0):
        raise ValueError(f"ingress host power must be >= 0 W, got {ingress_w:g}")
    wall0 = time.perf_counter()
    rates, per = period_rates(series, period_s)
    step_rates = series.rates[: len(rates) * per].reshape(len(rates), per)
    names = [b.name for b in boards]
    index = {n: i for i, n in enumerate(names)}
    kinds = sorted({b.kind for b in boards})
    of_kind = {k: np.array([i for i, b in enumerate(boards) if b.kind == k]) for k in kinds}
    nb, npd = len(boards), len(rates)
    weights = np.zeros((npd, nb))
    state = np.zeros((npd, nb), dtype=np.int8)  # 0 serving, 1 waking, 2 parked, 3 dead
    codes = {
        BoardState.SERVING: 0,
        BoardState.WAKING: 1,
        BoardState.PARKED: 2,
        BoardState.OFF: 2,  # parked either way: the run's parking mode says what it draws
        BoardState.DEAD: 3,
    }
    ongoing = np.zeros(nb)
    prev_rate = float(rates[0])
    for k in range(npd):
        obs = FleetObservation(
            now=k * period_s,
            rate_rps=prev_rate,
            ongoing=dict(zip(names, ongoing.tolist(), strict=True)),
        )
        plan = policy.decide(obs)
        for n, share in plan.weights.items():
            weights[k, index[n]] = share
        for n, board_state in policy.state.items():
            state[k, index[n]] = codes[board_state]
        for kind in kinds:
            idx = of_kind[kind]
            ongoing[idx] = models[kind].ongoing(weights[k, idx] * rates[k])
        prev_rate = float(rates[k])

    energy = 0.0
    served = rejected = 0.0
    hist = np.zeros(len(LATENCY_EDGES) - 1)
    per_kind: dict[str, float] = {}
    dt = series.step_s
    for kind in kinds:
        m, idx = models[kind], of_kind[kind]
        w = weights[:, idx]  # periods x boards
        st = state[:, idx]
        lam = (w[:, None, :] * step_rates[:, :, None]).reshape(-1, len(idx))  # steps x boards
        st_steps = np.repeat(st, per, axis=0)
        serving = st_steps == 0
        power = np.where(
            serving,
            m.power(lam),
            np.where(
                st_steps == 1,
                park.waking_w[kind],
                np.where(st_steps == 2, park.parked_w[kind], 0.0),
            ),
        )
        e = float(power.sum() * dt)
        per_kind[kind] = e
        energy += e
        got = np.where(serving, m.served_rate(lam), 0.0)
        served += float(got.sum() * dt)
        rejected += float((lam.sum() - got.sum()) * dt)
        hist += latency_histogram(m, lam[serving], got[serving] * dt)
    offered = float(series.counts[: npd * per].sum())
    return FleetRun(
        policy=label or policy.name,
        tuner=",".join(sorted({m.tuner for m in models.values()})),
        parking=park.mode,
        energy_j=energy,
        offered=offered,
        served=served,
        rejected=max(0.0, rejected),
        histogram=hist,
        slo_s=slo_s,
        period_s=period_s,
        awake=(state <= 1).sum(axis=1),
        serving=(state == 0).sum(axis=1),
        wall_s=time.perf_counter() - wall0,
        per_kind_energy_j=per_kind,
        weights=weights,
        states=state,
        variant=variant,
        ingress_w=ingress_w,
        duration_s=npd * per * dt,
    )


def latency_histogram(model: BoardModel, rates: np.ndarray, requests: np.ndarray) -> np.ndarray:
    """Requests per latency bin: each step's ``requests`` read at the histogram of its rate.

    Rates are snapped to 256 levels over the model's grid, so a day of steps costs 256
    interpolations, not one per step.
    """
    levels = np.linspace(0.0, model.rates[-1], 257)
    at = np.clip(np.searchsorted(levels, rates), 0, len(levels) - 1)
    req = np.bincount(at, weights=requests, minlength=len(levels))
    hist = np.zeros(len(LATENCY_EDGES) - 1)
    for j in np.nonzero(req)[0]:
        hist += req[j] * model.histogram_at(float(levels[j]))
    return hist


def board_step_rates(run: FleetRun, index: int, series: RateSeries) -> np.ndarray:
    """The rate one board was sent at every series step of ``run`` (0 while not serving)."""
    if run.weights is None or run.states is None:
        raise ValueError("this run kept no decisions to read")
    per = max(1, int(round(run.period_s / series.step_s)))
    npd = run.weights.shape[0]
    step_rates = series.rates[: npd * per].reshape(npd, per)
    lam = run.weights[:, index][:, None] * step_rates
    return np.where(run.states[:, index][:, None] == 0, lam, 0.0).reshape(-1)
