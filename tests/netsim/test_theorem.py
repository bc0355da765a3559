"""The splitting theorem, checked on random instances."""

from __future__ import annotations

import numpy as np
import pytest

from netsim import FlowSet, LeafSpine
from netsim.theorem import check_instance, run_trials, summarize


def test_minimal_splitting_matches_spraying_on_random_instances() -> None:
    trials = run_trials(60, seed=1)
    assert all(t.congestion_equal for t in trials)
    assert all(t.k_needed == t.k_formula for t in trials)
    assert all(t.ecmp_congestion >= t.spray_congestion - 1e-12 for t in trials)
    assert any(t.k_formula > 1 for t in trials) and any(t.ecmp_cct > t.spray_cct * 1.01 for t in trials)
    rows = summarize(trials)
    assert rows[0]["case"] == "all" and rows[0]["trials"] == 60


def test_a_hand_checkable_instance() -> None:
    # 2 leaves x 3 hosts, 2 spines; every host sends across: D = 3, so k = 2 / gcd(3, 2) = 2.
    topology = LeafSpine(2, 3, 2, 100.0)
    flows = FlowSet.build([0, 1, 2, 3, 4, 5], [3, 4, 5, 0, 1, 2], 1e6, 49152 + np.arange(6))
    trial = check_instance(topology, flows, "permutation", seed=0)
    assert (trial.degree, trial.k_formula, trial.k_needed) == (3, 2, 2)
    assert trial.spray_congestion == pytest.approx(1.5) and trial.split_congestion == pytest.approx(1.5)
    assert trial.split_cct == pytest.approx(trial.spray_cct)


def test_trials_are_deterministic() -> None:
    assert run_trials(5, seed=3) == run_trials(5, seed=3)
