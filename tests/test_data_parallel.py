"""The data-parallel plan: SoCFlow's groups and delayed aggregation, membership at boundaries."""

from __future__ import annotations

import pytest
import torch

from ecoserve.background.data_parallel import (
    LendSettings,
    SyncPlan,
    average_states,
    float_tensors,
    form_groups,
    mean_tensors,
)


def test_groups_are_formed_from_sorted_names_last_one_smaller() -> None:
    assert form_groups(["c", "a", "e", "b", "d"], 2) == (("a", "b"), ("c", "d"), ("e",))
    assert form_groups(["b", "a"], None) == (("a", "b"),)
    assert form_groups([], 2) == ()


def test_grouping_off_is_an_all_reduce_every_step() -> None:
    plan = SyncPlan(["b", "a", "c"])
    for step in range(1, 6):
        sync = plan.finish_step()
        assert sync.step == step
        assert sync.groups == (("a", "b", "c"),)
        assert sync.kind == "all-reduce" and sync.consistent


def test_groups_every_step_across_groups_every_k_steps() -> None:
    plan = SyncPlan(["a", "b", "c", "d"], group_size=2, k=4)
    kinds = [plan.finish_step().kind for _ in range(8)]
    assert kinds == ["group"] * 3 + ["global"] + ["group"] * 3 + ["global"]
    assert plan.sync_at(12).groups == (("a", "b"), ("c", "d"))
    assert not plan.diverged  # step 8 was global


def test_one_group_needs_no_cross_group_step() -> None:
    plan = SyncPlan(["a", "b"], group_size=2, k=4)
    assert {plan.finish_step().kind for _ in range(5)} == {"all-reduce"}


def test_every_member_takes_its_own_batch_and_no_batch_twice() -> None:
    plan = SyncPlan(["b", "a", "c"], group_size=2, k=4)
    seen: list[int] = []
    for _ in range(3):
        shards = plan.shards()
        assert list(shards) == ["a", "b", "c"]
        seen += shards.values()
        plan.finish_step()
    plan.leave("b")
    plan.boundary()
    seen += plan.shards().values()
    assert seen == list(range(11))
    assert plan.steps_by_member == {"a": 3, "b": 3, "c": 3}


def test_leaving_mid_cycle_averages_everyone_first_then_regroups() -> None:
    plan = SyncPlan(["a", "b", "c"], group_size=2, k=4)
    plan.finish_step()
    plan.finish_step()  # step 2: group-only, replicas diverged
    plan.leave("b")
    assert plan.members == ("a", "b", "c")  # nothing changes before the boundary
    change = plan.boundary()
    assert change is not None
    assert change.sync_first and change.left == ("b",) and change.step == 2
    assert change.before == (("a", "b"), ("c",))
    assert change.members == ("a", "c") and change.groups == (("a", "c"),)
    assert change.seed_from == "a"
    assert plan.boundary() is None
    assert plan.finish_step().groups == (("a", "c"),)


def test_a_change_right_after_a_global_step_needs_no_extra_average() -> None:
    plan = SyncPlan(["a", "b", "c"], group_size=2, k=2)
    plan.finish_step()
    plan.finish_step()  # global
    plan.join("d")
    change = plan.boundary()
    assert change is not None and not change.sync_first
    assert change.joined == ("d",) and change.groups == (("a", "b"), ("c", "d"))


def test_join_and_leave_requests_cancel_before_the_boundary() -> None:
    plan = SyncPlan(["a"])
    plan.join("b")
    plan.leave("b")
    plan.leave("a")
    plan.join("a")
    assert not plan.pending and plan.boundary() is None


def test_everyone_leaving_leaves_no_seed_and_no_step() -> None:
    plan = SyncPlan(["a"])
    plan.finish_step()
    plan.leave("a")
    change = plan.boundary()
    assert change is not None and change.seed_from is None and plan.members == ()
    with pytest.raises(RuntimeError, match="lend a board"):
        plan.finish_step()
    plan.join("z")
    assert plan.boundary() is not None and plan.shards() == {"z": 1}


def test_a_dead_member_is_dropped_at_once() -> None:
    plan = SyncPlan(["a", "b", "c"], group_size=2)
    plan.leave("b")
    plan.drop("b")
    assert plan.members == ("a", "c") and not plan.pending


def test_a_member_lost_during_a_step_is_left_out_of_its_sync() -> None:
    plan = SyncPlan(["a", "b", "c"], group_size=2, k=4)
    assert plan.shards() == {"a": 0, "b": 1, "c": 2}
    sync = plan.finish_step(lost=["c"])
    assert sync.groups == (("a", "b"),) and plan.steps_by_member == {"a": 1, "b": 1}
    assert plan.shards() == {"a": 3, "b": 4}  # c's batch is skipped, never repeated
    with pytest.raises(RuntimeError, match="every member was lost"):
        plan.finish_step(lost=["a", "b"])


def test_bad_requests_name_the_problem() -> None:
    with pytest.raises(ValueError, match="group_size"):
        SyncPlan(["a"], group_size=0)
    with pytest.raises(ValueError, match="k=0"):
        SyncPlan(["a"], k=0)
    with pytest.raises(ValueError, match="distinct"):
        SyncPlan(["a", "a"])
    plan = SyncPlan(["a"])
    with pytest.raises(ValueError, match="already in the job"):
        plan.join("a")
    with pytest.raises(ValueError, match="not in the job; members: a"):
        plan.leave("x")
    with pytest.raises(ValueError, match="non-empty string"):
        plan.join("")


def test_average_replaces_float_tensors_and_keeps_the_rest_per_replica() -> None:
    a = {"w": torch.tensor([1.0, 3.0]), "opt": [{"m": torch.tensor(2.0)}], "pos": 5,
         "rng": torch.tensor([1, 2], dtype=torch.uint8)}  # fmt: skip
    b = {"w": torch.tensor([3.0, 5.0]), "opt": [{"m": torch.tensor(4.0)}], "pos": 9,
         "rng": torch.tensor([7, 7], dtype=torch.uint8)}  # fmt: skip
    out = average_states([a, b])
    assert torch.equal(out[0]["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(out[1]["opt"][0]["m"], torch.tensor(3.0))
    assert out[0]["pos"] == 5 and out[1]["pos"] == 9
    assert torch.equal(out[1]["rng"], b["rng"])
    assert torch.equal(a["w"], torch.tensor([1.0, 3.0]))  # inputs untouched
    weighted = mean_tensors([float_tensors(a), float_tensors(b)], [3, 1])
    assert torch.allclose(weighted[("w",)], torch.tensor([1.5, 3.5]))


def test_averaging_foreign_states_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in paths"):
        average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="different shapes"):
        average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="one finite weight"):
        mean_tensors([{}], [0.0])
    with pytest.raises(ValueError, match="nothing to average"):
        mean_tensors([])


def test_lend_settings_from_a_config_table() -> None:
    s = LendSettings.from_mapping({"group_size": "2", "k": "4"})
    assert (s.job, s.group_size, s.k) == ("builtin:digits-finetune", 2, 4)
    assert LendSettings.from_mapping({"group_size": "off"}).group_size is None
    with pytest.raises(ValueError, match="unknown key"):
        LendSettings.from_mapping({"groups": 2})
    with pytest.raises(ValueError, match="lend.k"):
        LendSettings.from_mapping({"k": "four"})
    with pytest.raises(ValueError, match="lend.group_size"):
        LendSettings(group_size=0)
