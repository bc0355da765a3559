"""Objects following DCP's Stateful protocol with framework=None, and step-0 checkpoints (saved
before the first optimizer.step()) loaded with framework="ddp"/"fsdp2" on real gloo ranks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bytecheckpoint as bcp
from integrations.local_ranks import run_ranks
from tests.integrations.training import Setup, build, full_params, train


class Counter:
    """A Stateful object that is not a torch class."""

    def __init__(self, seen: int = 0) -> None:
        self.seen = seen
        self.history = torch.zeros(3)

    def state_dict(self) -> dict:
        return {"seen": self.seen, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]
        self.history.copy_(state["history"])


def _stepped_scheduler(model: nn.Module, steps: int) -> torch.optim.lr_scheduler.StepLR:
    optim = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=1, gamma=0.5)
    for _ in range(steps):
        optim.step()
        sched.step()
    return sched


def test_stateful_objects_round_trip_without_a_framework(tmp_path) -> None:
    torch.manual_seed(0)
    model, counter = nn.Linear(4, 3), Counter(5)
    counter.history += torch.tensor([1.0, 2.0, 3.0])
    bcp.save(str(tmp_path / "ck"), {"train": {"model": model, "sched": _stepped_scheduler(model, 3), "count": counter},
                                    "note": "x"})

    torch.manual_seed(1)
    model2, counter2 = nn.Linear(4, 3), Counter()
    sched2 = _stepped_scheduler(model2, 0)
    state = {"train": {"model": model2, "sched": sched2, "count": counter2}, "note": None}
    bcp.load(str(tmp_path / "ck"), state)
    assert torch.equal(model2.weight, model.weight) and torch.equal(model2.bias, model.bias)
    assert sched2.last_epoch == 3 and counter2.seen == 5 and torch.equal(counter2.history, torch.tensor([1.0, 2.0, 3.0]))
    assert state["note"] == "x" and state["train"]["model"] is model2  # the caller's objects stay in place


def test_a_module_loads_without_framework_from_a_ddp_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optim = torch.optim.AdamW(model.parameters())
    bcp.save(str(tmp_path / "ck"), {"model": model, "optimizer": optim}, framework="ddp")
    target = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    bcp.load(str(tmp_path / "ck"), {"model": target}, strict=False)  # the optimizer is not asked for
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), model.parameters()))
    with pytest.raises(bcp.MissingKeyError, match=r"'model\.3\.weight'.*nearest saved key\(s\).*'model\.2\.weight'"):
        bcp.load(str(tmp_path / "ck"), {"model": nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Identity(), nn.Linear(4, 2))})


def test_a_state_dict_that_is_not_a_dict_is_refused_naming_the_key(tmp_path) -> None:
    class Odd:
        def state_dict(self) -> list:
            return [1, 2]

        def load_state_dict(self, state: object) -> None:
            raise AssertionError("never called")

    with pytest.raises(bcp.UnsupportedValueError, match=r"run\.odd: .*Odd\.state_dict\(\) returned a list"):
        bcp.save(str(tmp_path / "ck"), {"run": {"odd": Odd()}})


STEPS = 3


def _save_step0(rank: int, world: int, path: str) -> None:
    model, optim = build(Setup("ddp"), 0, world)
    bcp.save(path, {"model": model, "optimizer": optim, "extra_state": {"step": 0}}, framework="ddp", timeout=60)


def _load_step0(rank: int, world: int, setup: Setup, strict: bool, path: str) -> dict:
    model, optim = build(setup, 123, world, lr_scale=3.0)
    train(model, optim, rank, world, range(100, 101))  # live optimizer state that the load must drop
    state = {"model": model, "optimizer": optim, "extra_state": None}
    bcp.load(path, state, framework=setup.bcp_framework, strict=strict, timeout=60)
    assert state["extra_state"] == {"step": 0}
    assert len(optim.state) == 0, "a step-0 checkpoint leaves the optimizer fresh"
    assert optim.param_groups[0]["lr"] == pytest.approx(0.01)  # hyperparameters come from the checkpoint
    train(model, optim, rank, world, range(STEPS))
    return full_params(model, optim, distributed=True)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize(("setup", "strict"), [(Setup("fsdp2"), True), (Setup("ddp"), False)],
                         ids=["fsdp2-strict", "ddp-not-strict"])
def test_a_step0_checkpoint_loads_and_training_matches_a_fresh_run(tmp_path, setup, strict) -> None:
    path = str(tmp_path / "step0")
    run_ranks(2, _save_step0, path)
    model, optim = build(Setup("single"), 0, 1)
    train(model, optim, 0, 1, range(STEPS))
    reference = full_params(model, optim, distributed=False)
    for resumed in run_ranks(2, _load_step0, setup, strict, path):
        assert sorted(resumed) == sorted(reference)
        for key, value in reference.items():
            torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=f"{key} differs")
