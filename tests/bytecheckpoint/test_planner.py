"""The global save plan: replicas deduplicated, writers balanced, conflicts between ranks named."""

from __future__ import annotations

import pytest
import torch

from bytecheckpoint.errors import PlanError
from bytecheckpoint.planner import global_save_plan, local_save_plan
from bytecheckpoint.state import ValueItem, flatten_state


def plan_of(state: dict):
    tensors, values = flatten_state(state)
    return local_save_plan(tensors, values, allow_pickle=False)


def test_replicated_boxes_get_one_writer_each_and_bytes_balance() -> None:
    state = {f"t{i}": torch.zeros(10 * (i + 1)) for i in range(6)}
    plan = global_save_plan([plan_of(state)] * 3)
    keys = [k for writes in plan.writes.values() for k in writes]
    assert len(keys) == len(set(keys)) == 6
    assert sorted(plan.bytes_per_rank.values()) == [280, 280, 280]  # 840 bytes split evenly


def test_value_on_one_rank_and_tensors_under_it_on_another_is_an_error() -> None:
    with pytest.raises(PlanError, match="'opt.w' is a plain value on some ranks but holds tensors on others"):
        global_save_plan([plan_of({"opt": {"x": torch.zeros(1), "w": {}}}), plan_of({"opt": {"x": torch.zeros(1), "w": {"m": torch.zeros(2)}}})])


def test_plain_values_come_from_the_lowest_rank_that_has_them() -> None:
    plan = global_save_plan([plan_of({"a": 1}), plan_of({"a": 2, "b": 3})])
    assert plan.values == {("a",): 1, ("b",): 3}


def test_a_plain_value_on_one_rank_and_a_rank_local_one_on_another_is_an_error() -> None:
    plain = local_save_plan([], [ValueItem(("cfg",), 1)], allow_pickle=False, rank=0)
    per_rank = local_save_plan([], [ValueItem(("cfg",), 2, rank_local=True)], allow_pickle=False, rank=1)
    with pytest.raises(PlanError, match="'cfg' is a plain value on some ranks but holds other values"):
        global_save_plan([plain, per_rank])
