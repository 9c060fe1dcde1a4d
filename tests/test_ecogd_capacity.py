"""EcoGD's capacity guard: what the batch-time model calls unsafe, and where the centre goes."""

from __future__ import annotations

import pytest

from ecoserve.core.busy_rate import BusyRate
from ecoserve.core.controller import BatchOutcome, Controller
from ecoserve.core.cost import Baseline
from ecoserve.core.knobs import BATCH, CPU, GPU, Config, Knob, SearchSpace
from tuners.ecogd import EcoGD
from tuners.ecogd.batch import BatchAxis
from tuners.ecogd.capacity import CapacityGuard

SPACE = SearchSpace.of(
    Knob(CPU, tuple(range(3))), Knob(GPU, tuple(range(3))), Knob(BATCH, tuple(range(1, 9)))
)


def batch() -> BatchAxis:
    axis = BatchAxis.of(SPACE)
    assert axis is not None
    return axis


def guard(headroom: float = 1.0) -> CapacityGuard:
    g = CapacityGuard(SPACE, batch(), headroom)
    # at maximum clocks a batch takes 0.1 s + 0.05 s an item: 1 item 6.7/s ... 8 items 16/s
    for items in (1, 4, 8):
        busy = 0.1 + 0.05 * items
        g.observe(
            (2, 2, items - 1), {"batches": 10.0, "busy_s": 10 * busy, "requests": 10.0 * items}
        )
    return g


def test_nothing_is_unsafe_while_the_peak_or_the_model_is_unknown() -> None:
    g = guard()
    assert not g.unsafe((2, 2, 0), None)
    fresh = CapacityGuard(SPACE, batch())
    assert fresh.capacity((2, 2, 0)) is None and not fresh.unsafe((2, 2, 0), 1000.0)


def test_a_configuration_below_the_peak_is_unsafe() -> None:
    g = guard()
    small, large = g.capacity((2, 2, 0)), g.capacity((2, 2, 7))
    assert small is not None and large is not None and small < 10.0 < large
    assert g.unsafe((2, 2, 0), 10.0) and not g.unsafe((2, 2, 7), 10.0)
    assert guard(headroom=2.0).unsafe((2, 2, 7), 10.0)  # 16/s does not carry 2 x 10/s


def test_slower_clocks_are_bounded_by_a_measured_faster_setting() -> None:
    g = guard()
    assert g.capacity((1, 1, 7)) == g.capacity((2, 2, 7))  # unmeasured: at most that


def test_with_one_size_measured_a_smaller_batch_is_no_faster_than_it() -> None:
    # only batch 8 measured (0.5 s a batch, 16/s): a line through the origin would credit
    # batch 2 with 16/s too; the guard assumes a batch of 2 takes as long, 4/s
    g = CapacityGuard(SPACE, batch())
    g.observe((2, 2, 7), {"batches": 10.0, "busy_s": 5.0, "requests": 80.0})
    assert g.capacity((2, 2, 7)) == pytest.approx(16.0)
    assert g.capacity((2, 2, 1)) == pytest.approx(4.0)
    assert g.unsafe((2, 2, 1), 10.0) and not g.unsafe((2, 2, 7), 10.0)
    # a second size measured (batch 1: 0.15 s): the line 0.1 s + 0.05 s an item decides again
    g.observe((2, 2, 0), {"batches": 10.0, "busy_s": 1.5, "requests": 10.0})
    assert g.capacity((2, 2, 1)) == pytest.approx(2 / 0.2)


def test_the_loops_time_around_each_batch_counts_against_its_capacity() -> None:
    # the same batches, and the serving loop spends 0.05 s of CPU on each request: batch 1
    # turns in 0.15 + 0.05 s (5/s, not 6.7/s) and batch 8 in 0.5 + 0.4 s (8.9/s, not 16/s)
    g = CapacityGuard(SPACE, batch())
    for items in (1, 4, 8):
        busy, loop = 0.1 + 0.05 * items, 0.05 * items
        told = {"batches": 10.0, "busy_s": 10 * busy, "loop_s": 10 * loop}
        g.observe((2, 2, items - 1), told | {"requests": 10.0 * items})
    assert g.capacity((2, 2, 0)) == pytest.approx(1 / 0.2)
    assert g.capacity((2, 2, 7)) == pytest.approx(8 / 0.9)
    assert g.unsafe((2, 2, 7), 10.0) and not guard().unsafe((2, 2, 7), 10.0)


def test_the_refuge_is_maximum_clocks_with_the_smallest_safe_batch() -> None:
    g = guard()
    refuge = g.refuge(10.0)
    assert refuge[:2] == (2, 2)
    assert not g.unsafe(refuge, 10.0) and g.unsafe((2, 2, refuge[2] - 1), 10.0)
    assert g.refuge(1000.0) == SPACE.maximum()  # none carries it: the largest


# -- the rate the guard must carry: the busy seconds', bursts undiluted by idle gaps ----------

#: A board where a batch of n takes 20 ms + 2 ms an item: n / (0.02 + 0.002 n) requests/s,
#: 45/s at batch 1, 115/s at 3, 206/s at 7, 222/s at 8, 308/s at 16.
FIXED_S, ITEM_S = 0.02, 0.002
BURST = 215.0  # requests/s inside a burst: batch 8 or more carries it
QUIET = 60.0  # the bursts' mean over a window with its idle gaps: batch 2 would carry that
BATCHES = SearchSpace.of(Knob(BATCH, tuple(range(1, 17))))
WINDOW = 416


def board_capacity(size: int) -> float:
    return size / (FIXED_S + ITEM_S * size)


def window(size: int, mean: float, busy: float) -> tuple[float, dict[str, float]]:
    """One window on that board: full batches; a small batch looks cheaper (the quiet
    window's lure) unless it cannot carry the bursts, when its queue costs it dear."""
    batches = WINDOW / size
    metrics = {
        "arrival_rate": mean,
        "busy_rate": busy,
        "requests": float(WINDOW),
        "arrivals": float(WINDOW),
        "batches": batches,
        "busy_s": batches * (FIXED_S + ITEM_S * size),
    }
    cost = 0.6 + 0.02 * size + (3.0 if board_capacity(size) < busy else 0.0)
    return cost, metrics


def drive(tuner: EcoGD, loads: list[tuple[float, float]]) -> list[int]:
    """Run the tuner through windows of (mean rate, busy rate); the batch sizes it asked."""
    asked = []
    for mean, busy in loads:
        config = tuner.ask()
        size = BATCHES.values(config)[BATCH]
        asked.append(int(size))
        tuner.tell(config, *window(int(size), mean, busy))
    return asked


def steady_then_bursty(bursty_windows: int = 200) -> list[tuple[float, float]]:
    """A steady 215 req/s, then bursts of 215 req/s between idle gaps (mean 60 req/s)."""
    return [(BURST, BURST)] * 40 + [(QUIET, BURST)] * bursty_windows


def test_the_busy_rate_counts_the_seconds_that_had_arrivals() -> None:
    rate = BusyRate()
    assert rate.rate() is None
    for second in (0, 10, 20):  # three bursts of 200 requests, 10 s apart
        for i in range(200):
            rate.add(second + i / 250)
    assert rate.rate() == 200.0  # the window's mean would be 600 / 20.8 s = 29 req/s
    spiky = BusyRate()
    for second in range(9):  # nine seconds of 10 requests, one of 100: the spike is absorbed
        for i in range(100 if second == 4 else 10):
            spiky.add(second + i / 101)
    assert spiky.rate() == 10.0
    with pytest.raises(ValueError, match="quantile"):
        BusyRate(quantile=0.0)


def test_the_controller_reports_the_busy_rate_and_the_loops_time() -> None:
    told: list[dict[str, float]] = []

    class Recorder(EcoGD):
        def tell(self, config: Config, cost: float, metrics: object = None) -> None:
            told.append(dict(metrics))  # type: ignore[call-overload]
            super().tell(config, cost, metrics)  # type: ignore[arg-type]

    control = Controller(BATCHES, Recorder(BATCHES), window_requests=100, warmup_requests=0)
    control.baseline = Baseline(0.1, 0.01)
    control.start(0.0, 0.0)
    now = 0.0
    for burst in range(4):  # 25 requests within 0.1 s, then 5 s of silence
        for _ in range(25):
            now += 0.004
            control.on_arrival(now)
        config = control.config
        outcome = BatchOutcome(
            config, [0.01] * 25, 1.0, now + 0.01, float(burst), busy_s=0.01, loop_s=0.02
        )
        control.on_batch(outcome)
        now += 5.0
    assert told, "no window closed"
    assert told[0]["arrival_rate"] < 10.0 and told[0]["busy_rate"] == 25.0
    # and the batches' run and the loop's time around them, summed over the window
    batches = told[0]["batches"]
    assert told[0]["busy_s"] == pytest.approx(0.01 * batches)
    assert told[0]["loop_s"] == pytest.approx(0.02 * batches)


@pytest.mark.parametrize(
    "options",
    [
        {},  # the default: guided opening scan, probes, load following
        {"guided_scan": False},  # the unguided scan walks every size down
        {"opening_scan": False, "probe_every": 3},  # climb steps and probes only
        {"follow_load": False},
        {"opening_scan": False, "adaptive_step": True, "max_step": 4},  # long strides
        {"research_sizes": 8, "change_threshold": 4.0},  # wide re-searches
    ],
)
def test_bursts_between_idle_gaps_never_send_ecogd_to_small_batches(
    options: dict[str, object],
) -> None:
    """The mean falls to 60 req/s once idle gaps open between the bursts; batches 1-3 carry
    that but not a burst. Whatever the strategies, EcoGD never measures them."""
    tuner = EcoGD(BATCHES, seed=1, **options)  # type: ignore[arg-type]
    asked = drive(tuner, steady_then_bursty())
    assert min(asked) >= 4, sorted(set(asked))
    # once the model has two sizes, nothing it calls unsafe is measured again
    known = asked.index(next(s for s in asked if s != 16)) + 1
    assert all(board_capacity(s) >= BURST for s in asked[known:]), asked[known:]
    assert tuner.describe()["demand_rate"] == BURST


def test_the_mean_rate_alone_would_have_let_it_go_there() -> None:
    """The same run told only the window means: the guard lets the small sizes in (what the
    busy rate prevents above)."""
    tuner = EcoGD(BATCHES, seed=1)
    asked = []
    for mean, _ in steady_then_bursty():
        config = tuner.ask()
        size = int(BATCHES.values(config)[BATCH])
        asked.append(size)
        cost, metrics = window(size, mean, BURST)
        del metrics["busy_rate"]
        tuner.tell(config, cost, metrics)
    assert min(asked) <= 3


def test_a_climb_step_never_measures_an_unsafe_neighbour() -> None:
    """Without the opening scan the climb walks the batch size down one step at a time: it
    stops above the sizes that cannot carry the load and never measures one."""
    tuner = EcoGD(BATCHES, seed=0, opening_scan=False, probe_every=0, follow_load=False)
    asked = drive(tuner, [(BURST, BURST)] * 120)
    model_known = asked.index(15) + 1  # two sizes measured: the line is fitted
    assert min(asked[model_known:]) == 8 and min(asked) >= 8


def test_a_load_alarm_takes_an_unsafe_centre_to_the_refuge() -> None:
    """A load that jumps past the centre's capacity: the window after the alarm does not
    re-measure the centre but the smallest size that carries the new rate."""
    tuner = EcoGD(BATCHES, seed=0, opening_scan=False, probe_every=0)
    low = drive(tuner, [(40.0, 40.0)] * 150)
    assert low[-1] <= 3  # settled on a small batch at 40 req/s
    high = drive(tuner, [(BURST, BURST)] * 40)
    # the first window at the new rate ran on the old centre (nothing knew of the rise);
    # after it, nothing below batch 8
    assert min(high[1:]) >= 8, high
