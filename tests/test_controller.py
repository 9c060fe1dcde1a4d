import pytest

from ecoserve.core.controller import BatchOutcome, Controller
from ecoserve.core.cost import Baseline, CostModel
from ecoserve.core.knobs import Knob, SearchSpace, batch_knob
from ecoserve.core.tuner import Tuner


class ScriptedTuner(Tuner):
    """Asks a fixed sequence of configurations and records what it is told."""

    name = "scripted"

    def __init__(self, space, script):
        super().__init__(space)
        self.script = list(script)
        self.told = []

    def ask(self):
        return self.script[min(len(self.told), len(self.script) - 1)]

    def tell(self, config, cost, metrics=None):
        self.told.append((config, cost, dict(metrics or {})))


@pytest.fixture
def space():
    return SearchSpace.of(Knob("gpu_freq_hz", (1.0, 2.0)), batch_knob(4))


def feed(ctrl, n_batches, per_batch, latency, energy, t0, dt=1.0, meter0=0.0, meter_rate=0.0):
    """Feed batches of `per_batch` requests each; returns the reports and final time."""
    reports, t = [], t0
    meter = meter0
    for _ in range(n_batches):
        t += dt
        meter += energy + meter_rate * dt
        r = ctrl.on_batch(
            BatchOutcome(ctrl.config, [latency] * per_batch, energy, end=t, meter_j=meter)
        )
        if r is not None:
            reports.append(r)
    return reports, t, meter


def test_first_window_is_baseline_at_maximum_then_cost_is_normalised(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(space, tuner, window_requests=8, warmup_requests=4, baseline_windows=1)
    assert ctrl.start(0.0, 0.0) == space.maximum()
    assert not ctrl.ready
    # warm-up: 4 requests dropped (one batch of 4), then 2 batches of 4 close the window
    reports, t, m = feed(ctrl, 3, 4, latency=0.2, energy=4.0, t0=0.0)
    assert len(reports) == 1 and reports[0].phase == "baseline"
    assert ctrl.ready
    assert ctrl.baseline.energy_per_request_j == pytest.approx(1.0)
    assert ctrl.baseline.latency_s == pytest.approx(0.2)
    assert reports[0].cost == pytest.approx(1.0)
    assert ctrl.config == (0, 0)
    # half the energy and twice the latency: cost = 0.5*0.5 + 0.5*2
    reports, t, m = feed(ctrl, 3, 4, latency=0.4, energy=2.0, t0=t, meter0=m)
    assert reports[0].cost == pytest.approx(0.5 * 0.5 + 0.5 * 2.0)
    assert tuner.told[-1][0] == (0, 0)


def test_warmup_drops_first_requests_after_each_change(space):
    tuner = ScriptedTuner(space, [(0, 0), (1, 0)])
    ctrl = Controller(
        space, tuner, baseline=Baseline(1.0, 1.0), window_requests=4, warmup_requests=4
    )
    ctrl.start(0.0, 0.0)
    # warm-up batch has a huge latency: must not count
    ctrl.on_batch(BatchOutcome(ctrl.config, [100.0] * 4, 400.0, end=1.0, meter_j=400.0))
    r = ctrl.on_batch(BatchOutcome(ctrl.config, [1.0] * 4, 4.0, end=2.0, meter_j=404.0))
    assert r is not None and r.latency_mean_s == pytest.approx(1.0)
    assert r.energy_per_request_j == pytest.approx(1.0)
    # a batch that ran under the old configuration is not judged against the new one
    assert ctrl.on_batch(BatchOutcome((0, 0), [50.0] * 4, 9.0, end=3.0, meter_j=413.0)) is None
    assert ctrl.config == (1, 0)


def test_same_configuration_again_skips_warmup(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(
        space, tuner, baseline=Baseline(1.0, 1.0), window_requests=4, warmup_requests=4
    )
    ctrl.start(0.0, 0.0)
    feed(ctrl, 2, 4, 1.0, 1.0, 0.0)
    reports, _, _ = feed(ctrl, 1, 4, 1.0, 1.0, 10.0)
    assert len(reports) == 1  # no warm-up: the unchanged config keeps measuring


def test_total_accounting_includes_idle_energy(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    active = Controller(
        space,
        tuner,
        baseline=Baseline(1.0, 1.0),
        window_requests=8,
        warmup_requests=0,
        accounting="active",
    )
    total = Controller(
        space,
        ScriptedTuner(space, [(0, 0)]),
        baseline=Baseline(1.0, 1.0),
        window_requests=8,
        warmup_requests=0,
        accounting="total",
    )
    for ctrl in (active, total):
        ctrl.start(0.0, 0.0)
        # each batch: 4 J active, and 2 J/s idle power over 1 s between batches
        reports, _, _ = feed(ctrl, 2, 4, 0.1, 4.0, 0.0, dt=1.0, meter_rate=2.0)
        assert len(reports) == 1
        ctrl.last = reports[0]
    assert active.last.energy_per_request_j == pytest.approx(8.0 / 8)
    assert total.last.energy_per_request_j == pytest.approx((8.0 + 4.0) / 8)
    assert total.last.accounting == "total" and active.last.accounting == "active"


def test_time_window_closes_a_slow_window(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(
        space,
        tuner,
        baseline=Baseline(1.0, 1.0),
        window_requests=1000,
        warmup_requests=0,
        window_seconds=5.0,
    )
    ctrl.start(0.0, 0.0)
    for t in (1.0, 2.0):
        ctrl.on_arrival(t)
    reports, _, _ = feed(ctrl, 2, 1, 0.1, 1.0, 0.0)
    assert reports == []
    r = ctrl.tick(6.0, 2.0)
    assert r is not None and r.requests == 2
    assert r.arrival_rate == pytest.approx(2 / 6.0)


def test_failures_are_counted_apart(space):
    ctrl = Controller(
        space,
        ScriptedTuner(space, [(0, 0)]),
        baseline=Baseline(1.0, 1.0),
        window_requests=4,
        warmup_requests=0,
    )
    ctrl.start(0.0, 0.0)
    ctrl.on_batch(BatchOutcome(ctrl.config, [], 0.0, end=1.0, meter_j=0.0, failed=4))
    r = ctrl.on_batch(BatchOutcome(ctrl.config, [0.5] * 4, 4.0, end=2.0, meter_j=4.0))
    assert r.failed == 4 and r.requests == 4 and r.latency_mean_s == pytest.approx(0.5)


def test_pins_hold_knobs_whatever_the_tuner_asks(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(
        space, tuner, baseline=Baseline(1.0, 1.0), window_requests=4, warmup_requests=0
    )
    ctrl.start(0.0, 0.0)
    ctrl.pin({"batch_size": 4}, 0.0, 0.0)
    assert ctrl.config == (0, 3)
    feed(ctrl, 1, 4, 1.0, 1.0, 0.0)
    assert ctrl.config == (0, 3)


def test_slo_cost_penalises_tail_over_bound():
    m = CostModel(slo_latency_s=0.1)
    b = Baseline(1.0, 1.0)
    assert m.cost(0.5, 0.05, b, latency_percentile_s=0.08) == pytest.approx(0.5)
    assert m.cost(0.5, 0.05, b, latency_percentile_s=0.2) == pytest.approx(0.5 + 10.0)


def test_baseline_file_round_trip_and_clear_error(tmp_path):
    from ecoserve.runtime.state_files import load_baseline, save_baseline

    b = Baseline(0.2, 0.05)
    save_baseline(b, tmp_path / "b.json")
    assert load_baseline(tmp_path / "b.json") == b
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="baseline"):
        load_baseline(tmp_path / "bad.json")


def test_baseline_is_the_last_of_several_windows_at_maximum(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(space, tuner, window_requests=4, warmup_requests=0, baseline_windows=2)
    ctrl.start(0.0, 0.0)
    first, t, m = feed(ctrl, 1, 4, latency=5.0, energy=40.0, t0=0.0)  # cold start
    assert first[0].phase == "baseline" and not ctrl.ready
    assert ctrl.config == space.maximum() and tuner.told == []
    second, t, m = feed(ctrl, 1, 4, latency=0.5, energy=4.0, t0=t, meter0=m)
    assert second[0].phase == "baseline" and ctrl.ready
    assert ctrl.baseline.latency_s == pytest.approx(0.5)
    assert tuner.told == [(space.maximum(), 1.0, tuner.told[0][2])]
    assert ctrl.config == (0, 0)


def test_a_provisional_baseline_is_remeasured_on_real_traffic(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(
        space,
        tuner,
        baseline=Baseline(1.0, 0.01),
        window_requests=4,
        warmup_requests=0,
        baseline_windows=1,
    )
    ctrl.start(0.0, 0.0)
    assert ctrl.config == (0, 0)
    ctrl.remeasure_baseline(1.0, 0.0)
    assert ctrl.ready and ctrl.phase == "baseline" and ctrl.config == space.maximum()
    reports, t, m = feed(ctrl, 1, 4, latency=0.5, energy=8.0, t0=1.0)  # queueing: slower
    assert reports[0].phase == "baseline" and reports[0].cost == pytest.approx(1.0)
    assert ctrl.baseline == Baseline(2.0, 0.5)
    assert ctrl.phase == "tuning" and ctrl.config == (0, 0)
    reports, _, _ = feed(ctrl, 1, 4, latency=0.5, energy=4.0, t0=t, meter0=m)
    assert reports[0].cost == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_windows_tell_the_tuner_their_batches_busy_time_and_whether_they_set_the_baseline(space):
    tuner = ScriptedTuner(space, [(0, 0)])
    ctrl = Controller(space, tuner, window_requests=8, warmup_requests=0, baseline_windows=1)
    ctrl.start(0.0, 0.0)
    t = 0.0
    for _ in range(4):  # 2 baseline batches, then 2 tuning batches, of 4 requests
        t += 1.0
        ctrl.on_batch(BatchOutcome(ctrl.config, [0.2] * 4, 1.0, end=t, meter_j=t, busy_s=0.25))
    (_, _, first), (_, _, second) = tuner.told
    assert (first["batches"], first["busy_s"], first["baseline"]) == (2.0, 0.5, 1.0)
    assert (second["batches"], second["busy_s"], second["baseline"]) == (2.0, 0.5, 0.0)
