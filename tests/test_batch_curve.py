"""The cost curve over batch size that guides EcoGD's opening scan."""

from __future__ import annotations

import math

import pytest

from tuners.batch_curve import RUGGED_RMS, fit_curve, next_size, seed_sizes

INDICES = list(range(16))
SIZES = [float(i + 1) for i in INDICES]


def curve(b: float) -> float:
    return 0.4 + 0.6 / b + 0.04 * b


def scan(cost_of_size, margin: float = 0.05) -> list[int]:
    """Run the guided scan to its end; the batch sizes it measured, in order."""
    measured: dict[int, float] = {}
    while True:
        index, _ = next_size(measured, INDICES, SIZES, margin)
        if index is None:
            return [i + 1 for i in measured]
        measured[index] = cost_of_size(index + 1)


def test_the_fit_recovers_the_curve_it_was_given() -> None:
    fit = fit_curve({b: curve(b) for b in (1.0, 3.0, 8.0, 16.0)})
    assert fit is not None
    assert (fit.c0, fit.c1, fit.c2) == pytest.approx((0.4, 0.6, 0.04), rel=1e-9)
    assert fit.relative_rms == pytest.approx(0.0, abs=1e-9)


def test_no_fit_below_three_sizes_and_sizes_must_be_positive() -> None:
    assert fit_curve({1.0: 1.0, 2.0: 0.9}) is None
    with pytest.raises(ValueError, match="positive"):
        fit_curve({0.0: 1.0, 2.0: 0.9, 4.0: 0.8})


def test_the_seeds_halve_the_log_distance_from_the_largest_to_the_smallest_twice() -> None:
    assert seed_sizes(INDICES, SIZES) == [15, 3, 1]  # sizes 16, 4, 2
    assert seed_sizes([0, 1], [1.0, 2.0]) == [1, 0]


def test_a_smooth_curve_is_scanned_in_a_few_windows_and_its_minimum_found() -> None:
    measured = scan(curve)
    assert sorted(measured) == [2, 3, 4, 5, 6, 16]  # seeds, then within 5% of the best
    assert min(measured, key=curve) == 4


def test_a_larger_margin_measures_more_sizes() -> None:
    assert len(scan(curve, margin=0.15)) > len(scan(curve, margin=0.05))


def test_a_rugged_curve_falls_back_to_measuring_every_size() -> None:
    """A burst-aligned valley at batch 5 leaves residuals no smooth curve explains."""

    def rugged(b: float) -> float:
        return curve(b) * (0.8 if b in (5, 10) else 1.0)

    assert sorted(scan(rugged)) == list(range(1, 17))


def test_noise_within_the_rugged_limit_keeps_the_scan_guided() -> None:
    wobble = [0.02 * math.sin(7.0 * b) for b in range(17)]
    measured = scan(lambda b: curve(b) * (1.0 + wobble[int(b)]))
    fit = fit_curve({float(b): curve(b) * (1.0 + wobble[b]) for b in measured})
    assert fit is not None and fit.relative_rms < RUGGED_RMS
    assert len(measured) < 10


def test_predictions_cover_every_unmeasured_size_once_fitted() -> None:
    measured = {15: curve(16), 3: curve(4), 1: curve(2)}
    index, predicted = next_size(measured, INDICES, SIZES, 0.05)
    assert index is not None and index not in measured
    assert set(predicted) == set(INDICES) - set(measured)
    assert predicted[9] == pytest.approx(curve(10))


def test_batch_1_is_measured_though_the_curve_through_larger_sizes_calls_it_a_loser() -> None:
    """A light load under a short timer: every size from 2 up waits out the timer and they
    cost alike (a little noise tilts the fit upwards to the small end), while batch 1 waits
    for nothing and costs a third less. The fit through 16, 4 and 2 would rule batch 1 out."""
    waits = {16.0: 1.03, 4.0: 1.04, 2.0: 1.07}

    def timer_bound(b: float) -> float:
        return 0.66 if b == 1 else waits.get(b, 1.04)

    tilted = fit_curve(waits)
    assert tilted is not None and tilted.predict(1.0) > 1.03 * 1.05  # a "clear loser"
    measured = scan(timer_bound)
    assert 1 in measured and min(measured, key=timer_bound) == 1
