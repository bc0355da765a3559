"""Megatron-Core's model-parallel RNG tracker streams travel in ``RNGState`` (one process)."""

from __future__ import annotations

import torch

import bytecheckpoint as bcp
from integrations.reshardable import RNGState


def _draw(tracker, name: str) -> torch.Tensor:
    """The next numbers of the tracker's stream ``name`` (forked the way Megatron's tracker does it,
    but on the CPU generator)."""
    saved = torch.get_rng_state()
    torch.set_rng_state(tracker.get_states()[name])
    out = torch.rand(8)
    states = tracker.get_states()
    states[name] = torch.get_rng_state()
    tracker.set_states(states)
    torch.set_rng_state(saved)
    return out


def test_megatron_tracker_streams_are_saved_and_restored(tmp_path):
    from megatron.core.tensor_parallel import random as megatron_random

    megatron_random.initialize_rng_tracker(force_reset=True)
    tracker = megatron_random.get_cuda_rng_tracker()
    torch.manual_seed(11)
    stream_a = torch.get_rng_state()
    torch.manual_seed(12)
    tracker.set_states({"model-parallel-rng": stream_a, "data-parallel-rng": torch.get_rng_state()})

    bcp.save(tmp_path / "ckpt", {"rng": RNGState()}, framework="ddp")
    expected = _draw(tracker, "model-parallel-rng")
    _draw(tracker, "data-parallel-rng")

    bcp.load(tmp_path / "ckpt", {"rng": RNGState()}, framework="ddp")
    assert sorted(tracker.get_states()) == ["data-parallel-rng", "model-parallel-rng"]
    torch.testing.assert_close(_draw(tracker, "model-parallel-rng"), expected, rtol=0, atol=0)


def test_no_megatron_state_without_a_tracker(tmp_path, monkeypatch):
    from megatron.core.tensor_parallel import random as megatron_random

    monkeypatch.setattr(megatron_random, "_CUDA_RNG_STATE_TRACKER", None)
    bcp.save(tmp_path / "ckpt", {"rng": RNGState()}, framework="ddp")
    full = bcp.load_full(tmp_path / "ckpt")
    per_rank = full["rng"]["per_rank"]
    assert "megatron" not in per_rank[0] and "torch" in per_rank[0]
