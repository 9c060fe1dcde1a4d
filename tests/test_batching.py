import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecoserve.core.batching import BatchPolicy, Dispatch, QueueFullError, WaitUntil


def test_full_batch_dispatches_at_once():
    p = BatchPolicy(batch_size=4, max_wait=1.0)
    for i in range(4):
        p.add(i, arrival=0.0)
    action = p.poll(now=0.0)
    assert isinstance(action, Dispatch) and action.items == [0, 1, 2, 3]
    assert p.poll(0.0) is None


def test_partial_batch_waits_until_oldest_times_out_then_flushes():
    p = BatchPolicy(batch_size=8, max_wait=0.1)
    p.add("a", arrival=1.0)
    p.add("b", arrival=1.05)
    action = p.poll(now=1.02)
    assert isinstance(action, WaitUntil) and action.deadline == pytest.approx(1.1)
    action = p.poll(now=1.1)
    assert isinstance(action, Dispatch) and action.items == ["a", "b"]
    assert action.arrivals == [1.0, 1.05]


def test_never_larger_than_batch_size_and_rest_stays_queued():
    p = BatchPolicy(batch_size=3, max_wait=0.5)
    for i in range(7):
        p.add(i, arrival=0.0)
    sizes = []
    while (a := p.poll(10.0)) is not None:
        assert isinstance(a, Dispatch)
        sizes.append(len(a.items))
    assert sizes == [3, 3, 1]


def test_bounded_queue_rejects():
    p = BatchPolicy(batch_size=2, max_wait=0.1, max_queue=2)
    p.add(1, 0.0)
    p.add(2, 0.0)
    with pytest.raises(QueueFullError):
        p.add(3, 0.0)


def test_discard_drops_gone_callers_before_batching():
    p = BatchPolicy(batch_size=2, max_wait=0.1)
    for i in range(4):
        p.add(i, 0.0)
    assert p.discard(lambda x: x % 2 == 0) == [0, 2]
    a = p.poll(0.0)
    assert isinstance(a, Dispatch) and a.items == [1, 3]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        BatchPolicy(batch_size=0)
    with pytest.raises(ValueError, match="max_wait"):
        BatchPolicy(max_wait=-1)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(1, 16),
    wait=st.floats(0.0, 0.5),
    gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=60),
)
def test_no_item_is_lost_none_waits_past_max_wait_no_batch_too_big(batch, wait, gaps):
    """Driven like a simulator: every item leaves, in order, within max_wait of arrival."""
    p = BatchPolicy(batch_size=batch, max_wait=wait)
    arrivals, t = [], 0.0
    for g in gaps:
        t += g
        arrivals.append(t)
    out, now, i = [], 0.0, 0
    while len(out) < len(arrivals):
        while i < len(arrivals) and arrivals[i] <= now:
            p.add(i, arrivals[i])
            i += 1
        action = p.poll(now)
        if isinstance(action, Dispatch):
            assert 1 <= len(action.items) <= batch
            if len(action.items) < batch:  # partial batches only leave on time-out
                assert now - action.arrivals[0] >= wait - 1e-12
            for a in action.arrivals:
                assert now - a <= wait + 1e-9 or len(action.items) == batch
            out.extend(action.items)
            continue
        next_arrival = arrivals[i] if i < len(arrivals) else float("inf")
        deadline = action.deadline if isinstance(action, WaitUntil) else float("inf")
        now = min(next_arrival, deadline)
    assert out == list(range(len(arrivals)))


def test_a_new_batch_size_releases_what_was_queued_under_the_old_one():
    """A remainder left by the old size must not wait to fill a batch of the new size."""
    p = BatchPolicy(batch_size=16, max_wait=2.0)
    for i in range(6):
        p.add(i, arrival=0.0)
    assert isinstance(p.poll(0.1), WaitUntil)
    p.set_batch_size(10)
    released = p.poll(0.1)
    assert isinstance(released, Dispatch) and released.items == [0, 1, 2, 3, 4, 5]
    # what arrives after the change follows the rule again
    for i in range(6, 9):
        p.add(i, arrival=0.2)
    assert isinstance(p.poll(0.2), WaitUntil)


def test_the_release_covers_only_items_queued_before_the_change_in_batches_of_the_new_size():
    p = BatchPolicy(batch_size=16, max_wait=2.0)
    for i in range(7):
        p.add(i, arrival=0.0)
    p.set_batch_size(3)
    p.add(7, arrival=0.1)  # after the change
    sizes = []
    while isinstance(a := p.poll(0.1), Dispatch):
        sizes.append(a.items)
    assert sizes == [[0, 1, 2], [3, 4, 5], [6, 7]]  # the last batch leaves because 6 is released
    assert p.poll(0.1) is None


def test_the_same_batch_size_again_releases_nothing():
    p = BatchPolicy(batch_size=4, max_wait=2.0)
    p.add("a", arrival=0.0)
    p.set_batch_size(4)
    assert isinstance(p.poll(0.1), WaitUntil)


def test_discarding_released_items_keeps_the_release_count_exact():
    p = BatchPolicy(batch_size=8, max_wait=2.0)
    for i in range(4):
        p.add(i, arrival=0.0)
    p.set_batch_size(6)  # 0..3 released
    p.add(4, arrival=0.1)
    p.add(5, arrival=0.1)
    p.discard(lambda x: x in (0, 1, 2))
    a = p.poll(0.1)
    assert isinstance(a, Dispatch) and a.items == [3, 4, 5]  # 3 is released, 4 and 5 join it
    p.add(6, arrival=0.2)
    assert isinstance(p.poll(0.2), WaitUntil)  # nothing released is left
