"""Any-to-any resharding of model + optimizer across DDP, FSDP1, FSDP2 and a single process:
after a resharded load, the next optimizer steps equal an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bytecheckpoint as bcp
from integrations.local_ranks import run_ranks
from integrations.optimizer_state import OptimizerMismatchError
from tests.integrations.training import Setup, TinyNet, build, full_params, train

pytestmark = pytest.mark.distributed
STEPS_BEFORE, STEPS_AFTER = 3, 2


def _run_single(setup: Setup, seed: int, steps: range, path: str | None = None, load: bool = False):
    model, optim = build(setup, seed, 1, lr_scale=3.0 if load else 1.0)
    if load:
        state = {"model": model, "optimizer": optim, "extra_state": None}
        bcp.load(path, state, framework=setup.bcp_framework)
        assert state["extra_state"] == {"step": STEPS_BEFORE}
    loaded = full_params(model, optim, distributed=False)
    train(model, optim, 0, 1, steps)
    if path is not None and not load:
        bcp.save(path, {"model": model, "optimizer": optim, "extra_state": {"step": STEPS_BEFORE}}, framework=setup.bcp_framework)
    return loaded, full_params(model, optim, distributed=False)


def _save_worker(rank: int, world: int, setup: Setup, path: str) -> dict:
    model, optim = build(setup, 0, world)
    train(model, optim, rank, world, range(STEPS_BEFORE))
    bcp.save(path, {"model": model, "optimizer": optim, "extra_state": {"step": STEPS_BEFORE}},
             framework=setup.bcp_framework, timeout=60)
    return full_params(model, optim, distributed=True)


def _load_worker(rank: int, world: int, setup: Setup, path: str) -> tuple[dict, dict]:
    model, optim = build(setup, 123, world, lr_scale=3.0)  # only the checkpoint can make it right
    state = {"model": model, "optimizer": optim, "extra_state": None}
    bcp.load(path, state, framework=setup.bcp_framework, timeout=60)
    assert state["extra_state"] == {"step": STEPS_BEFORE}
    loaded = full_params(model, optim, distributed=True)
    train(model, optim, rank, world, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER))
    return loaded, full_params(model, optim, distributed=True)


def _assert_same(a: dict, b: dict, exact: bool, what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k, value in a.items():
        if exact:
            assert torch.equal(value, b[k]), f"{what}: {k} differs"
        else:
            torch.testing.assert_close(value, b[k], rtol=1e-5, atol=1e-6, msg=f"{what}: {k} differs")


PAIRS = [
    (Setup("ddp"), 4, Setup("fsdp2"), 2),
    (Setup("fsdp1"), 4, Setup("fsdp2"), 3),
    (Setup("fsdp2"), 2, Setup("single"), 1),
    (Setup("single"), 1, Setup("fsdp2"), 4),
    (Setup("fsdp1-orig", "adam"), 2, Setup("fsdp1", "adam"), 3),
    (Setup("fsdp2", "sgd"), 3, Setup("fsdp1-orig", "sgd"), 2),
    (Setup("fsdp1", "sgd"), 3, Setup("ddp", "sgd"), 2),
]


@pytest.mark.parametrize(("src", "w1", "dst", "w2"), PAIRS, ids=lambda v: getattr(v, "framework", v) if not isinstance(v, int) else str(v))
def test_resharded_resume_matches_an_uninterrupted_run(tmp_path, src, w1, dst, w2) -> None:
    path = str(tmp_path / "ck")
    _, reference = _run_single(Setup("single", src.optimizer), 0, range(STEPS_BEFORE + STEPS_AFTER))
    saved = _run_single(src, 0, range(STEPS_BEFORE), path)[1] if w1 == 1 else run_ranks(w1, _save_worker, src, path)[0]
    if w2 == 1:
        loaded, resumed = _run_single(dst, 123, range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER), path, load=True)
    else:
        results = run_ranks(w2, _load_worker, dst, path)
        loaded, resumed = results[0]
        for other in results[1:]:
            _assert_same(other[1], resumed, exact=True, what="ranks disagree")
    _assert_same(loaded, saved, exact=True, what=f"{src.framework}@{w1} -> {dst.framework}@{w2} after load")
    _assert_same(resumed, reference, exact=False, what="resumed vs uninterrupted")


def _async_save_worker(rank: int, world: int, setup: Setup, path: str) -> dict:
    """Save asynchronously and train on before the save is done: the checkpoint holds the state at
    the call, not what the next optimizer step made of it."""
    model, optim = build(setup, 0, world)
    train(model, optim, rank, world, range(STEPS_BEFORE))
    at_save = full_params(model, optim, distributed=True)
    handle = bcp.save(path, {"model": model, "optimizer": optim, "extra_state": {"step": STEPS_BEFORE}},
                      framework=setup.bcp_framework, timeout=60, async_save=True)
    train(model, optim, rank, world, range(STEPS_BEFORE, STEPS_BEFORE + 1))  # overlaps the write
    handle.wait()
    return at_save


@pytest.mark.parametrize(("src", "dst", "w2"), [(Setup("fsdp2"), Setup("fsdp2"), 3), (Setup("ddp"), Setup("fsdp1"), 2)],
                         ids=["fsdp2-2-fsdp2-3", "ddp-2-fsdp1-2"])
def test_async_save_while_training_on_resumes_like_an_uninterrupted_run(tmp_path, src, dst, w2) -> None:
    path = str(tmp_path / "ck")
    _, reference = _run_single(Setup("single", src.optimizer), 0, range(STEPS_BEFORE + STEPS_AFTER))
    saved = run_ranks(2, _async_save_worker, src, path)[0]
    loaded, resumed = run_ranks(w2, _load_worker, dst, path)[0]
    _assert_same(loaded, saved, exact=True, what="loaded vs state at the async save call")
    _assert_same(resumed, reference, exact=False, what="resumed vs uninterrupted")


def test_renamed_or_reshaped_parameter_and_wrong_optimizer_are_named(tmp_path) -> None:
    model, optim = build(Setup("single"), 0, 1)
    train(model, optim, 0, 1, range(1))
    bcp.save(tmp_path / "ck", {"model": model, "optimizer": optim}, framework="fsdp2")

    class Renamed(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.head = self.out
            del self.out

        def forward(self, x):  # pragma: no cover - not called
            return x

    renamed = Renamed()
    with pytest.raises(bcp.MissingKeyError, match=r"model\.head\.weight"):
        bcp.load(tmp_path / "ck", {"model": renamed, "optimizer": torch.optim.AdamW(renamed.parameters())}, framework="fsdp2")

    reshaped = TinyNet()
    reshaped.out = nn.Linear(17, 12)
    with pytest.raises(bcp.ShapeMismatchError, match=r"'model\.out\.weight': checkpoint \[11, 17\], target \[12, 17\]"):
        bcp.load(tmp_path / "ck", {"model": reshaped, "optimizer": torch.optim.AdamW(reshaped.parameters())}, framework="fsdp2")

    plain = TinyNet()
    with pytest.raises(OptimizerMismatchError, match=r"torch\.optim\.adamw\.AdamW state.*torch\.optim\.sgd\.SGD"):
        bcp.load(tmp_path / "ck", {"model": plain, "optimizer": torch.optim.SGD(plain.parameters(), lr=0.1)}, framework="fsdp2")
