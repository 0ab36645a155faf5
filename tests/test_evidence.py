"""Chapter 6's verdict machinery (mcmia_helpers.evidence) on synthetic zoo scores whose truth is
known: a leaking zoo, a zoo that leaks less, and a zoo that reshuffles who is exposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmia_helpers import evidence
from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.errors import UserError
from mcmia_helpers.zoo.evaluate import ZooScores

N, P = 16, 400


def _zoo(signal: np.ndarray, seed: int, name: str = "z", noise: float = 1.0) -> ZooScores:
    """Scores = signal[e] * member + noise: per-example exposure ``signal``."""
    membership = lira_in_out_sets(P, N, 7).numpy().astype(bool)
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, noise, (N, P)) + signal[None, :] * membership
    canary = np.zeros(P, dtype=bool)
    canary[:40] = True
    return ZooScores("lira_online", name, "dense", scores, np.zeros(N), membership, canary)


def test_direction_needs_the_whole_interval_on_one_side():
    assert evidence.direction(-0.3, -0.1) == "lower"
    assert evidence.direction(0.1, 0.3) == "higher"
    assert evidence.direction(-0.1, 0.3) == "no clear change"
    assert evidence.direction(None, None) == "no clear change"
    assert evidence.direction(float("nan"), 1.0) == "no clear change"


def test_paired_row_finds_a_real_drop_and_no_drop_between_twins():
    signal = np.full(P, 1.5)
    dense = _zoo(signal, 1)
    weaker = _zoo(signal * 0.3, 1)  # same noise, a third of the signal
    twin = _zoo(signal, 2)  # same signal, other noise
    drop = evidence.paired_row(weaker, dense, "auc", n_bootstrap=200)
    assert drop["direction"] == "lower" and drop["change"] < -0.2
    same = evidence.paired_row(twin, dense, "auc", n_bootstrap=200)
    assert same["direction"] == "no clear change"
    assert same["low"] < 0 < same["high"]


def test_pooled_row_reports_low_fpr_metrics_with_intervals_and_subsets():
    signal = np.full(P, 1.0)
    signal[:40] = 4.0  # the canaries leak far more
    zs = _zoo(signal, 3)
    everything = evidence.pooled_row(zs, "all", n_bootstrap=100)
    canaries = evidence.pooled_row(zs, "canaries", n_bootstrap=100)
    ordinary = evidence.pooled_row(zs, "ordinary", n_bootstrap=100)
    assert canaries["tpr_at_0_1pct_fpr"] > ordinary["tpr_at_0_1pct_fpr"]
    assert everything["nonmembers"] == N * P // 2
    for key in evidence.METRICS:
        if everything[key] is not None and everything[key + "_lo"] is not None:
            assert everything[key + "_lo"] <= everything[key] + 1e-9
            assert everything[key] <= everything[key + "_hi"] + 1e-9


def test_targets_needed_follows_the_square_root_law():
    assert evidence.targets_needed(32, 0.01, 0.005) == 128
    assert evidence.targets_needed(32, 0.004, 0.005) == 32
    assert evidence.targets_needed(10, 0.011, 0.005) % 2 == 0
    with pytest.raises(UserError):
        evidence.targets_needed(0, 0.01, 0.005)


def test_halves_keep_whole_pairs():
    first, second = evidence.halves(16)
    assert set(first) | set(second) == set(range(16))
    assert all((i ^ 1) in set(first) for i in first)
    with pytest.raises(UserError):
        evidence.halves(6)


def test_exposure_change_separates_a_reshuffle_from_the_noise_floor():
    rng = np.random.default_rng(0)
    signal = rng.exponential(1.0, P)
    dense = _zoo(signal, 4, noise=0.5)
    reshuffled = _zoo(rng.permutation(signal), 5, noise=0.5)  # other examples exposed
    floor = evidence.exposure_change(dense, dense)
    moved = evidence.exposure_change(dense, reshuffled)
    assert floor.summary()["rank_correlation"] > 0.5
    assert moved.summary()["rank_correlation"] < 0.3
    beyond = evidence.exposure_beyond_floor(moved, floor, n_bootstrap=300)
    assert beyond["direction"] == "higher"
    same = evidence.exposure_beyond_floor(floor, floor, n_bootstrap=300)
    assert same["change"] == 0 and same["direction"] == "no clear change"


def test_class_spread_sees_one_leaky_class():
    classes = np.arange(P) % 4
    signal = np.where(classes == 2, 3.0, 0.5)
    zs = _zoo(signal, 6)
    spread = evidence.class_spread(zs, classes)
    assert spread["per_class"].shape == (N, 4)
    assert (np.nanargmax(spread["per_class"], axis=1) == 2).all()
    even = evidence.class_spread(_zoo(np.full(P, 0.5), 6), classes)
    change = evidence.paired_target_change(even["spread"], spread["spread"])
    assert change["direction"] == "higher" and change["units"] == N // 2


def test_compose_verdict_takes_its_words_from_the_directions():
    text = evidence.compose_verdict({
        "a": {"direction": "lower", "subject": "ADMM pruning", "what": "the TPR"},
        "b": {"direction": "no clear change", "subject": "Min-Max", "what": "the AUC"},
    })
    assert text == "ADMM pruning lowers the TPR. Min-Max does not measurably change the AUC."
    with pytest.raises(UserError):
        evidence.compose_verdict({"a": {"direction": "up", "subject": "x", "what": "y"}})


def test_take_targets_keeps_rows():
    zs = _zoo(np.ones(P), 7)
    part = evidence.take_targets(zs, [2, 3])
    assert np.array_equal(part.scores, zs.scores[[2, 3]])
    assert torch.is_tensor(torch.as_tensor(part.membership))
