"""Cascades: the confidence rule, the online threshold chooser, the runner, the models."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ecoserve.core.knobs import DEFAULT_THRESHOLDS, SearchSpace, threshold_knob
from ecoserve.core.knobs import THRESHOLD as CASCADE_KNOB
from ecoserve.core.link import Link
from ecoserve.core.tiers import CascadeCosts, CascadePolicy, DevicePower
from ecoserve.models.cascade import confidence, decide
from ecoserve.models.digits import (
    count_correct,
    load_digits_model,
    load_digits_split,
    preprocess,
    weights_path,
)
from ecoserve.models.tensor_codec import decode_tensor, encode_tensor
from ecoserve.server.tier_node import CascadeRunner
from tuners.cascade_threshold import ThresholdChooser

POWER = DevicePower(busy_w=3.0, tx_w=1.0, idle_w=0.5)
COSTS = CascadeCosts(small_s=20e-6, big_s=25e-6, input_bytes=384, output_bytes=168)
README = Path(__file__).resolve().parents[1] / "ecoserve" / "weights" / "README.md"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def logits_for(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (rows must sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().to(torch.float32)


# -- the rule --------------------------------------------------------------------------------

# Each row's top softmax probability, and whether it is answered here, per threshold.
ROWS = [[0.95, 0.03, 0.01, 0.01], [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25] * 4]
ANSWERS = {
    0.0: [True, True, True, True],  # never forward
    0.3: [True, True, True, False],
    0.5: [True, True, False, False],
    0.9: [True, False, False, False],
    0.99: [False, False, False, False],
    1.0: [False, False, False, False],  # always forward
}


@pytest.mark.parametrize("threshold", sorted(ANSWERS))
def test_policy_answers_here_iff_top_probability_reaches_threshold(threshold: float) -> None:
    decision = decide(CascadePolicy(threshold), logits_for(ROWS))
    assert list(decision.local) == ANSWERS[threshold]
    assert decision.scores == pytest.approx([0.95, 0.7, 0.4, 0.25], abs=1e-6)
    assert decision.preds == (0, 0, 0, 0)
    assert decision.forward_rows == [i for i, keep in enumerate(ANSWERS[threshold]) if not keep]
    assert not any(decision.explored)


def test_boundary_score_is_answered_here() -> None:
    exact_half = torch.zeros(1, 2)  # softmax [0.5, 0.5] exactly
    assert decide(CascadePolicy(0.5), exact_half).local == (True,)


def test_threshold_one_forwards_even_a_saturated_softmax() -> None:
    saturated = torch.tensor([[100.0, 0.0, 0.0]])
    assert float(confidence(saturated)[0]) == 1.0
    assert decide(CascadePolicy(1.0), saturated).local == (False,)
    assert decide(CascadePolicy(0.99), saturated).local == (True,)


def test_exploration_forwards_a_seeded_share_of_confident_inputs() -> None:
    logits = logits_for([[0.97, 0.01, 0.01, 0.01]] * 2000)
    a = decide(CascadePolicy(0.9, explore=0.05, seed=1), logits)
    b = decide(CascadePolicy(0.9, explore=0.05, seed=1), logits)
    assert a == b
    share = sum(a.explored) / 2000
    assert 0.03 < share < 0.07
    assert all(not loc for loc, ex in zip(a.local, a.explored, strict=True) if ex)
    with pytest.raises(ValueError):
        CascadePolicy(1.5)


def test_threshold_knob() -> None:
    knob = threshold_knob()
    assert knob.name == CASCADE_KNOB == "cascade_threshold"
    assert knob.values[0] == 0.0 and knob.values[-1] == 1.0
    assert 12 <= len([v for v in knob.values if 0.5 <= v <= 0.99]) <= 13
    assert SearchSpace.of(knob).values((knob.top,)) == {CASCADE_KNOB: 1.0}


# -- the chooser -----------------------------------------------------------------------------


def synthetic_request(rng: random.Random) -> tuple[float, bool]:
    """A score and whether the small model is wrong: overconfident, error = 2 (1 - score).

    Scores ``1 - 0.7 u^2`` (u uniform) cluster near 1. True accuracy when answering here at
    or above ``t`` (big model always right): ``1 - 1.4 a^3 / 3`` with ``a = sqrt((1-t)/0.7)``.
    """
    s = 1.0 - 0.7 * rng.random() ** 2
    return s, rng.random() < min(1.0, 2.0 * (1.0 - s))


def true_accuracy(t: float) -> float:
    if t >= 1.0:
        return 1.0
    a = min(1.0, math.sqrt((1.0 - t) / 0.7))
    return 1.0 - 1.4 * a**3 / 3.0


def run_online(chooser: ThresholdChooser, link: Link, rate: float, n: int, seed: int = 0):
    """Serve ``n`` synthetic requests, re-choosing the threshold every 200."""
    rng = random.Random(seed)
    policy = CascadePolicy(1.0, explore=chooser.explore, seed=chooser.seed)
    correct = 0
    for i in range(n):
        if i % 200 == 0:
            policy.threshold = chooser.choose(link, rate)
        s, wrong = synthetic_request(rng)
        keep = policy.keeps(s) and not (rng.random() < chooser.explore)
        if keep:
            chooser.observe_local(s)
            correct += not wrong
        else:
            chooser.observe_forwarded(s, small_pred=1 if wrong else 0, big_pred=0)
            correct += 1
    return policy.threshold, correct / n


def test_chooser_starts_by_forwarding_everything() -> None:
    chooser = ThresholdChooser(COSTS, POWER)
    assert chooser.choose(Link(1e7, 0.005), 10.0) == 1.0
    assert chooser.knob() == threshold_knob(DEFAULT_THRESHOLDS)


def test_chooser_respects_the_accuracy_floor() -> None:
    floor = 0.95
    chooser = ThresholdChooser(
        COSTS, POWER, accuracy_floor=floor, error_weight=0.0, baseline_link=Link(1e7, 0.005)
    )
    final, served = run_online(chooser, Link(1e7, 0.005), rate=10.0, n=20_000)
    # the smallest grid threshold that truly meets the floor is 0.85
    assert min(t for t in DEFAULT_THRESHOLDS if true_accuracy(t) >= floor) == 0.85
    assert true_accuracy(final) >= floor
    assert final < 1.0  # and it does answer here
    assert served >= floor
    est = {r.threshold: r for r in chooser.table(Link(1e7, 0.005), 10.0)}
    assert est[final].accuracy == pytest.approx(true_accuracy(final), abs=0.01)


def fed_chooser(**kwargs) -> ThresholdChooser:
    """A chooser that has seen 5000 synthetic requests, all forwarded (so all labelled)."""
    chooser = ThresholdChooser(COSTS, POWER, baseline_link=Link(1e7, 0.005), **kwargs)
    rng = random.Random(3)
    for _ in range(5000):
        s, wrong = synthetic_request(rng)
        chooser.observe_forwarded(s, 1 if wrong else 0, 0)
    return chooser


def test_chooser_forwards_less_on_a_slow_link_and_more_on_a_fast_one() -> None:
    chooser = fed_chooser(error_weight=2.0)
    bandwidths = [1e5, 1e6, 1e7, 1e8, 1e9]
    chosen = [chooser.choose(Link(bw, 0.001), rate=1.0) for bw in bandwidths]
    assert chosen == sorted(chosen)
    assert chosen[0] < chosen[-1]
    table = {bw: chooser.table(Link(bw, 0.001), 1.0) for bw in (1e5, 1e9)}
    f_slow = next(r for r in table[1e5] if r.threshold == chosen[0]).forward_fraction
    f_fast = next(r for r in table[1e9] if r.threshold == chosen[-1]).forward_fraction
    assert f_slow < f_fast


def test_chooser_keeps_the_uplink_under_capacity() -> None:
    chooser = fed_chooser(accuracy_floor=0.95, error_weight=0.0)
    fast = chooser.choose(Link(1e8, 0.001), rate=100.0)
    slow = chooser.choose(Link(2e5, 0.001), rate=100.0)  # 100/s x 384 B needs 307 kbit/s x f
    assert slow < fast
    row = next(r for r in chooser.table(Link(2e5, 0.001), 100.0) if r.threshold == slow)
    assert row.fits_link and row.uplink_bps < 0.8 * 2e5


def test_chooser_estimates_are_consistent() -> None:
    chooser = fed_chooser()
    rows = chooser.table(Link(1e7, 0.005), 5.0)
    fractions = [r.forward_fraction for r in rows]
    assert fractions == sorted(fractions)  # a higher threshold forwards more
    assert rows[-1].forward_fraction == 1.0 and rows[-1].accuracy == 1.0
    assert rows[0].forward_fraction == pytest.approx(chooser.explore)
    assert all(r.accuracy_bound <= r.accuracy + 1e-12 for r in rows)


def test_chooser_counts_scores_below_the_lowest_threshold_as_forwarded() -> None:
    chooser = ThresholdChooser(COSTS, POWER, thresholds=(0.5, 0.9, 1.0), explore=0.0)
    for score in (0.2, 0.3, 0.6, 0.95):
        chooser.observe_local(score)
    rows = {r.threshold: r for r in chooser.table(Link(1e7, 0.005))}
    assert rows[0.5].forward_fraction == pytest.approx(0.5)
    assert rows[0.9].forward_fraction == pytest.approx(0.75)
    assert rows[1.0].forward_fraction == 1.0


def test_chooser_with_the_link_down_forwards_least() -> None:
    chooser = fed_chooser(accuracy_floor=0.99)
    assert chooser.choose(Link(0.0, 0.005), rate=1.0) == 0.0
    fresh = ThresholdChooser(COSTS, POWER)
    assert fresh.choose(Link(0.0), 1.0) == 0.0
    assert fresh.baseline is None
    fresh.table(Link(1e6, 0.01))  # only choose() fixes the baseline
    assert fresh.baseline is None
    fresh.choose(Link(1e6, 0.01))
    assert fresh.baseline is not None


def test_chooser_state_round_trips_through_json() -> None:
    chooser = fed_chooser()
    clone = ThresholdChooser(COSTS, POWER)
    clone.load_state_dict(json.loads(json.dumps(chooser.state_dict())))
    link = Link(3e6, 0.01)
    assert clone.choose(link, 2.0) == chooser.choose(link, 2.0)
    with pytest.raises(ValueError, match="thresholds"):
        ThresholdChooser(COSTS, POWER, thresholds=(0.0, 0.5, 1.0)).load_state_dict(
            chooser.state_dict()
        )


# -- the runner and the models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    return load_digits_model("small"), load_digits_model("large")


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.mark.parametrize("threshold", [0.0, 0.9, 1.0])
async def test_runner_answers_here_or_with_the_big_model(models, split, threshold: float) -> None:
    small, large = models
    x = split.x_test[:64]
    calls: list[int] = []

    async def forward(payload: bytes) -> bytes:
        rows = decode_tensor(payload)
        calls.append(len(rows))
        with torch.no_grad():
            return encode_tensor(large(rows))

    chooser = ThresholdChooser(COSTS, POWER)
    runner = CascadeRunner(small, CascadePolicy(threshold), forward, chooser=chooser)
    result = await runner.run(x)
    with torch.no_grad():
        small_logits, big_logits = small(x), large(x)
    scores, small_pred = confidence(small_logits)
    want_forward = [threshold >= 1.0 or float(s) < threshold for s in scores]
    assert list(result.forwarded) == want_forward
    for i, fwd in enumerate(want_forward):
        source = big_logits if fwd else small_logits
        assert torch.allclose(result.logits[i], source[i], atol=1e-5)
        assert result.preds[i] == int(source[i].argmax())
    assert calls == ([sum(want_forward)] if any(want_forward) else [])
    assert chooser.observations == len(x)
    assert sum(chooser.labelled) == sum(want_forward)


async def test_runner_rejects_a_wrong_reply(models) -> None:
    small, _ = models

    async def forward(payload: bytes) -> bytes:
        return encode_tensor(torch.zeros(1, 3))

    runner = CascadeRunner(small, CascadePolicy(1.0), forward, in_thread=False)
    with pytest.raises(ValueError, match="answered shape"):
        await runner.run(torch.rand(2, 1, 8, 8))


def readme_counts() -> dict[str, tuple[int, int]]:
    counts = {}
    for line in README.read_text().splitlines():
        m = re.match(r"\|\s*(small|large)\s*\|.*?\((\d+)/(\d+)\)", line)
        if m:
            counts[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return counts


def test_shipped_models_reach_the_readme_accuracy(models, split) -> None:
    counts = readme_counts()
    assert set(counts) == {"small", "large"}
    for name, model in zip(("small", "large"), models, strict=True):
        correct = count_correct(model, split.x_test, split.y_test)
        assert (correct, len(split.y_test)) == counts[name], name
        assert weights_path(name).stat().st_size < 1_000_000
        assert not model.training


def test_digits_preprocessing_and_split() -> None:
    split = load_digits_split()
    assert split.x_train.shape == (1347, 1, 8, 8) and split.x_test.shape == (450, 1, 8, 8)
    assert split.x_train.dtype == torch.float32
    assert float(split.x_train.min()) == 0.0 and float(split.x_train.max()) == 1.0
    assert torch.equal(preprocess(torch.full((64,), 16)), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="unknown digits model"):
        load_digits_model("medium")
