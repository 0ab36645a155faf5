"""Chapter 6's verdict machinery (mcmia_helpers.evidence) on synthetic zoo scores whose truth is
known: a leaking zoo, a zoo that leaks less, and a zoo that reshuffles who is exposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmia_helpers import evidence
from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import auc as metrics_auc
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
    assert drop["reading"] == "lower" and drop["change"] < -0.2
    same = evidence.paired_row(twin, dense, "auc", n_bootstrap=200)
    assert same["low"] < 0 < same["high"]
    assert same["reading"] in ("equivalent", "inconclusive")
    assert same["reading"] == evidence.reading(same["low"], same["high"], 0.01)


def test_pooled_row_reports_low_fpr_metrics_with_intervals_and_subsets():
    signal = np.full(P, 1.0)
    signal[:40] = 4.0  # the canaries leak far more
    zs = _zoo(signal, 3)
    everything = evidence.pooled_row(zs, "all", n_bootstrap=100)
    canaries = evidence.pooled_row(zs, "canaries", n_bootstrap=100)
    ordinary = evidence.pooled_row(zs, "ordinary", n_bootstrap=100)
    # 16 x 20 canary non-members resolve 1% FPR (320 >= 1,000? no: not even that)
    assert canaries["tpr_at_1pct_fpr"] is None and canaries["tpr_at_1pct_fpr_needs"] == 1000
    assert everything["tpr_at_0_1pct_fpr"] is None  # 3,200 non-members: 10,000 needed
    assert canaries["auc"] > ordinary["auc"]
    assert ordinary["tpr_at_1pct_fpr"] is not None  # 2,880 non-members resolve 1%
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
    beyond = evidence.exposure_beyond_floor(dense, reshuffled)
    assert beyond["reading"] == "higher"
    same = evidence.exposure_beyond_floor(dense, dense)
    assert same["change"] == 0 and same["reading"] == "equivalent"


def test_class_spread_sees_one_leaky_class():
    classes = np.arange(P) % 4
    signal = np.where(classes == 2, 3.0, 0.5)
    zs = _zoo(signal, 6)
    spread = evidence.class_spread(zs, classes)
    assert spread["per_class"].shape == (N, 4)
    assert (np.nanargmax(spread["per_class"], axis=1) == 2).all()
    even = evidence.class_spread(_zoo(np.full(P, 0.5), 6), classes)
    change = evidence.paired_target_change(even["spread"], spread["spread"])
    assert change["reading"] == "higher" and change["units"] == N // 2


def test_take_targets_keeps_rows():
    zs = _zoo(np.ones(P), 7)
    part = evidence.take_targets(zs, [2, 3])
    assert np.array_equal(part.scores, zs.scores[[2, 3]])
    assert torch.is_tensor(torch.as_tensor(part.membership))


# --------------------------------------------------------------------------- meaning (issue 22)


def _half_zoo(first_signal: float, second_signal: float, seed: int) -> ZooScores:
    """A zoo whose first half of targets leaks ``first_signal`` and second half ``second_signal``."""
    signal = np.full(P, 1.0)
    zs = _zoo(signal, seed)
    first, second = evidence.halves(N)
    base = _zoo(np.zeros(P), seed)  # the same noise without any signal
    scores = base.scores.copy()
    scores[first] += first_signal * zs.membership[first]
    scores[second] += second_signal * zs.membership[second]
    return ZooScores(zs.attack, "halves", "dense", scores, zs.thresholds, zs.membership, zs.canary)


def test_exposure_change_measures_the_first_half_before_and_the_second_half_after():
    """``before`` is read on the first half of its targets, ``after`` on the second half of its
    own: never one half twice (the noise floor would be zero and every defence would
    "reshuffle exposure")."""
    leaky_first = _half_zoo(3.0, 0.0, 1)
    change = evidence.exposure_change(leaky_first, leaky_first)
    assert change.before.mean() > 0.9 and abs(change.after.mean() - 0.5) < 0.05
    first, second = evidence.halves(N)
    auc_first, _ = evidence.split_exposure(leaky_first, first)
    auc_second, _ = evidence.split_exposure(leaky_first, second)
    np.testing.assert_array_equal(change.before, auc_first)
    np.testing.assert_array_equal(change.after, auc_second)


def test_the_noise_floor_of_two_different_halves_is_not_zero():
    rng = np.random.default_rng(3)
    dense = _zoo(rng.exponential(1.0, P), 8, noise=0.5)
    floor = evidence.exposure_change(dense, dense)
    summary = floor.summary()
    assert summary["mean_abs_change"] > 0.02  # retraining moves exposure
    assert not np.array_equal(floor.before, floor.after)
    assert 0.3 < summary["rank_correlation"] < 0.99


def test_a_reseeded_dense_zoo_does_not_change_exposure_beyond_the_floor():
    """A "defence" that is the dense zoo trained again with other seeds (same exposure, other
    noise) moves exposure exactly as much as retraining does."""
    rng = np.random.default_rng(4)
    signal = rng.exponential(1.0, P)
    dense, reseeded = _zoo(signal, 10, noise=0.5), _zoo(signal, 11, noise=0.5)
    floor = evidence.exposure_change(dense, dense)
    moved = evidence.exposure_change(dense, reseeded)
    beyond = evidence.exposure_beyond_floor(dense, reseeded)
    assert beyond["reading"] in ("equivalent", "inconclusive"), beyond
    assert beyond["low"] < 0 < beyond["high"]
    other = _zoo(rng.permutation(signal) * 3, 11, noise=0.5)  # other examples, more exposed
    more = evidence.exposure_beyond_floor(dense, other)
    assert more["reading"] == "higher" and more["change"] > 0.03


def test_split_exposure_is_each_examples_membership_auc_over_those_targets():
    zs = _zoo(np.linspace(0, 3, P), 12)
    rows = evidence.halves(N)[1]
    auc, flags = evidence.split_exposure(zs, rows, fpr=0.01)
    s, m = zs.scores[rows], zs.membership[rows]
    for e in (0, 57, 399):  # by hand: members' scores against non-members', ties one half
        ins, outs = s[m[:, e], e], s[~m[:, e], e]
        wins = (ins[:, None] > outs[None, :]).mean() + 0.5 * (ins[:, None] == outs[None, :]).mean()
        assert auc[e] == pytest.approx(wins)
    # flagged: at least half of the targets that trained on it score it above the pooled
    # threshold at 1% FPR of those targets' non-member scores
    negatives = np.sort(s[~m])[::-1]
    threshold = negatives[int(np.floor(negatives.size * 0.01))]
    by_hand = np.array([(s[m[:, e], e] > threshold).mean() >= 0.5 for e in range(P)])
    np.testing.assert_array_equal(flags, by_hand)
    assert flags[-50:].mean() > flags[:50].mean()  # the leakiest examples are the flagged ones


def test_exposure_summary_counts_by_hand():
    change = evidence.ExposureChange(np.array([0.5, 0.9, 0.7, 0.6]), np.array([0.6, 0.5, 0.7, 0.9]),
                                     np.array([False, True, True, False]),
                                     np.array([False, False, True, True]))
    s = change.summary()
    assert s["mean_abs_change"] == pytest.approx(0.2) and s["mean_change"] == pytest.approx(0.0)
    assert (s["newly_exposed"], s["no_longer_exposed"], s["flagged_before"], s["flagged_after"]) == (1, 1, 2, 2)
    assert s["jaccard"] == pytest.approx(1 / 3)
    part = change.summary(np.array([True, True, False, False]))
    assert part["examples"] == 2 and part["newly_exposed"] == 0 and part["no_longer_exposed"] == 1


def test_class_spread_names_the_planted_class_and_leaves_the_canaries_out():
    classes = np.arange(P) % 4
    signal = np.where(classes == 1, 3.0, 0.3)
    signal[:40] = np.where(classes[:40] == 3, 6.0, 0.3)  # canaries of class 3 leak hugely
    zs = _zoo(signal, 13)
    spread = evidence.class_spread(zs, classes)
    assert list(spread["classes"]) == [0, 1, 2, 3]
    assert (np.nanargmax(spread["per_class"], axis=1) == 1).all()
    ordinary = ~zs.canary
    for i in (0, 9):
        by_hand = [metrics_auc(zs.membership[i, ordinary & (classes == c)],
                               zs.scores[i, ordinary & (classes == c)]) for c in range(4)]
        np.testing.assert_allclose(spread["per_class"][i], by_hand)
        assert spread["spread"][i] == pytest.approx(max(by_hand) - min(by_hand))
    with_canaries = evidence.class_spread(zs, classes, ordinary_only=False)
    assert (with_canaries["per_class"][:, 3] > spread["per_class"][:, 3]).all()


def test_paired_target_change_averages_within_pairs_and_finds_a_drop():
    before = np.linspace(0.2, 0.4, N)
    drop = evidence.paired_target_change(before, before - 0.05 - 0.001 * np.arange(N))
    assert drop["reading"] == "lower" and drop["units"] == N // 2
    assert drop["change"] == pytest.approx(-0.05 - 0.001 * np.arange(N).mean())
    same = evidence.paired_target_change(before, before[::-1])  # a reshuffle of the same values
    assert same["reading"] in ("equivalent", "inconclusive") and same["low"] < 0 < same["high"]


def test_targets_needed_does_not_round_floating_point_noise_up_a_pair():
    assert 8 * (0.07 / 0.01) ** 2 > 392  # 392.00000000000006
    assert evidence.targets_needed(8, 0.07, 0.01) == 392
    assert evidence.targets_needed(10, 0.011, 0.005) == 50  # 48.4 targets: 25 pairs
    assert evidence.targets_needed(8, 0.0701, 0.01) == 394  # a real excess still costs a pair


def test_take_targets_keeps_each_targets_own_shadows_and_threshold():
    zs = _zoo(np.ones(P), 14)
    zs.shadows = [[("dense", j) for j in range(N) if j not in (i, i ^ 1)] for i in range(N)]
    zs.thresholds = np.arange(N, dtype=float)
    part = evidence.take_targets(zs, [5, 2])
    assert part.thresholds.tolist() == [5.0, 2.0]
    assert part.shadows == [zs.shadows[5], zs.shadows[2]]
    np.testing.assert_array_equal(part.membership, zs.membership[[5, 2]])
