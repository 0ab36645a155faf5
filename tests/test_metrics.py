"""Tests for mcmia_helpers.metrics: agreement with scikit-learn, TPR at low FPR, bootstrap."""

from __future__ import annotations


import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import (METRIC_KEYS, ROC_FPR_GRID, _stratified_weights, advantage,
                                   attack_metrics, auc, balanced_accuracy, best_threshold,
                                   compact_roc, metrics_table, per_class_auc, roc_curve, tpr_at_fpr)


def _sample(seed: int, n_pos: int = 300, n_neg: int = 200, shift: float = 0.7, decimals: int | None = 1):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    scores = rng.normal(size=n_pos + n_neg) + shift * labels
    if decimals is not None:  # rounding creates many ties between members and non-members
        scores = np.round(scores, decimals)
    perm = rng.permutation(len(labels))
    return labels[perm], scores[perm]


def _brute_force(labels, scores):
    """(fpr, tpr) at every candidate threshold, by definition."""
    points = [(0.0, 0.0)]
    for t in np.unique(scores):
        pred = scores >= t
        points.append((pred[labels == 0].mean(), pred[labels == 1].mean()))
    return np.array(points)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_roc_and_auc_agree_with_sklearn(seed: int, decimals: int | None) -> None:
    labels, scores = _sample(seed, decimals=decimals)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
    assert thresholds[0] == np.inf
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    record = attack_metrics(labels, scores, n_bootstrap=0)
    assert record["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_known_auc_values() -> None:
    assert auc([1, 1, 0, 0], [4, 3, 2, 1]) == 1.0
    assert auc([1, 1, 0, 0], [1, 2, 3, 4]) == 0.0
    assert auc([1, 0], [5, 5]) == 0.5  # a tie counts one half
    assert auc([1, 1, 0, 0], [3, 1, 2, 0]) == 0.75


def test_tpr_at_fpr_with_ties() -> None:
    # members 3, 2, 2; non-members 2, 1, 0: the tie at 2 cannot be split
    labels = [1, 1, 1, 0, 0, 0]
    scores = [3, 2, 2, 2, 1, 0]
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(labels, scores, 0.3) == pytest.approx(1 / 3)  # next point has FPR 1/3
    assert tpr_at_fpr(labels, scores, 1 / 3) == pytest.approx(1.0)
    assert tpr_at_fpr(labels, scores, 1.0) == 1.0


def test_tpr_at_fpr_all_tied_is_zero_below_full_fpr() -> None:
    labels = [1, 1, 0, 0]
    scores = [0.5, 0.5, 0.5, 0.5]
    assert tpr_at_fpr(labels, scores, 0.49) == 0.0
    assert tpr_at_fpr(labels, scores, 1.0) == 1.0


def test_tpr_at_fpr_tiny_set_only_fpr_zero_reachable() -> None:
    # 500 non-members: FPR comes in steps of 0.2%, so 0.1% is only met at FPR 0, i.e. by the
    # members scored above every non-member.
    labels, scores = _sample(3, n_pos=500, n_neg=500, shift=1.5, decimals=None)
    above_all = (scores[labels == 1] > scores[labels == 0].max()).mean()
    assert tpr_at_fpr(labels, scores, 0.001) == pytest.approx(above_all)
    assert tpr_at_fpr(labels, scores, 0.0) == pytest.approx(above_all)
    assert tpr_at_fpr(labels, scores, 0.002) >= above_all


@pytest.mark.parametrize("seed", range(8))
def test_tpr_at_fpr_and_advantage_match_brute_force(seed: int) -> None:
    labels, scores = _sample(seed, n_pos=40, n_neg=25, decimals=0)
    points = _brute_force(labels, scores)
    for target in (0.0, 0.01, 0.04, 0.1, 0.5):
        expected = points[points[:, 0] <= target + 1e-12, 1].max()
        assert tpr_at_fpr(labels, scores, target) == pytest.approx(expected)
    assert advantage(labels, scores) == pytest.approx((points[:, 1] - points[:, 0]).max())


def test_balanced_accuracy_by_hand() -> None:
    labels = [1, 1, 1, 1, 0, 0]
    predictions = [1, 1, 1, 0, 0, 1]
    assert balanced_accuracy(labels, predictions) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_calibrated_and_oracle_accuracy() -> None:
    labels, scores = _sample(1)
    calibrated = attack_metrics(labels, scores, threshold=0.2, n_bootstrap=0)
    assert calibrated["threshold_kind"] == "calibrated"
    assert calibrated["threshold"] == 0.2
    assert calibrated["accuracy"] == pytest.approx(balanced_accuracy(labels, (scores >= 0.2).astype(int)))
    oracle = attack_metrics(labels, scores, n_bootstrap=0)
    assert oracle["threshold_kind"] == "oracle"
    assert oracle["accuracy"] == pytest.approx(0.5 + advantage(labels, scores) / 2)
    assert oracle["accuracy"] >= calibrated["accuracy"]
    t = best_threshold(labels, scores)
    assert balanced_accuracy(labels, (scores >= t).astype(int)) == pytest.approx(oracle["accuracy"])


def test_record_layout() -> None:
    labels, scores = _sample(2)
    record = attack_metrics(labels, scores, n_bootstrap=50, seed=1)
    for key in METRIC_KEYS:
        assert 0.0 <= record[key] <= 1.0
        lo, hi = record["ci95"][key]
        assert lo <= record[key] <= hi and lo < hi, key  # around the estimate, not a point
    assert record["n_members"] == 300 and record["n_nonmembers"] == 200
    assert record == attack_metrics(labels, scores, n_bootstrap=50, seed=1)  # seeded
    table = metrics_table({"a": record, "b": record})
    assert list(table.index) == ["a", "b"] and "auc_ci95" in table.columns


def test_auc_interval_matches_a_plain_stratified_bootstrap() -> None:
    """The 95% AUC interval against a direct reference: 2000 resamples of the members and of the
    non-members (with replacement, each group keeping its size), the AUC as the Mann-Whitney
    statistic (average ranks for ties), the 2.5 and 97.5 percentiles. Monte Carlo error of the
    two at these sizes: about 0.005."""
    from scipy.stats import rankdata

    def mann_whitney_auc(p: np.ndarray, n: np.ndarray) -> float:
        ranks = rankdata(np.r_[p, n])
        return (ranks[:len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n))

    labels, scores = _sample(2)
    lo, hi = attack_metrics(labels, scores, n_bootstrap=400, seed=1)["ci95"]["auc"]
    rng = np.random.default_rng(0)
    pos, neg = scores[labels == 1], scores[labels == 0]
    assert mann_whitney_auc(pos, neg) == pytest.approx(auc(labels, scores))
    reference = [mann_whitney_auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
                 for _ in range(2000)]
    ref_lo, ref_hi = np.percentile(reference, [2.5, 97.5])
    assert abs(lo - ref_lo) < 0.015 and abs(hi - ref_hi) < 0.015, ((lo, hi), (ref_lo, ref_hi))


def test_null_auc_interval_contains_half() -> None:
    # Two disjoint sets of non-member scores from one distribution: nothing to detect.
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        scores = rng.normal(size=1000)
        labels = np.r_[np.ones(500), np.zeros(500)].astype(int)
        lo, hi = attack_metrics(labels, scores, n_bootstrap=200, seed=seed)["ci95"]["auc"]
        covered += lo <= 0.5 <= hi
        if seed == 0:
            assert lo <= 0.5 <= hi
    assert covered >= 16  # a 95% interval: 19 expected, far fewer would be a broken bootstrap


def test_separated_scores_give_auc_near_one() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500), np.zeros(500)].astype(int)
    scores = rng.normal(size=1000) + 6.0 * labels
    record = attack_metrics(labels, scores, n_bootstrap=200)
    assert record["auc"] > 0.99 and record["ci95"]["auc"][0] > 0.98
    assert record["tpr_at_1pct_fpr"] > 0.9
    assert record["advantage"] > 0.9


def test_bootstrap_is_stratified() -> None:
    labels = np.r_[np.ones(7), np.zeros(13)].astype(int)
    weights = _stratified_weights(labels, 30, np.random.default_rng(0))
    np.testing.assert_array_equal(weights[:, labels == 1].sum(1), 7)
    np.testing.assert_array_equal(weights[:, labels == 0].sum(1), 13)


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 0)])
def test_compact_roc_in_records(seed: int, decimals: int | None) -> None:
    labels, scores = _sample(seed, n_pos=1500, n_neg=2000, shift=1.5, decimals=decimals)
    record = attack_metrics(labels, scores, n_bootstrap=0)
    roc = record["roc"]
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert list(fpr) == list(ROC_FPR_GRID) and len(tpr) == len(fpr)
    assert fpr[0] == 0.0 and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) > 0) and np.all(np.diff(tpr) >= 0)
    assert tpr[list(fpr).index(0.01)] == round(record["tpr_at_1pct_fpr"], 5)
    assert tpr[list(fpr).index(0.001)] == round(record["tpr_at_0_1pct_fpr"], 5)
    for f, t in zip(fpr, tpr):  # every point follows the rule of tpr_at_fpr
        assert t == pytest.approx(tpr_at_fpr(labels, scores, f), abs=5e-6)
    assert compact_roc(labels, scores) == roc
    assert len(str(roc)) < 800  # small enough for every record of a grid


def test_compact_roc_of_perfect_and_reversed_scores() -> None:
    labels = np.array([1, 1, 0, 0])
    assert compact_roc(labels, [4, 3, 2, 1], fpr_grid=[0, 0.5, 1]) == {"fpr": [0.0, 0.5, 1.0],
                                                                      "tpr": [1.0, 1.0, 1.0]}
    assert compact_roc(labels, [1, 2, 3, 4], fpr_grid=[0, 0.5, 1]) == {"fpr": [0.0, 0.5, 1.0],
                                                                      "tpr": [0.0, 0.0, 1.0]}
    with pytest.raises(UserError, match="fpr_grid"):
        compact_roc(labels, [4, 3, 2, 1], fpr_grid=[0.5, 2.0])


def test_per_class_auc() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([2, 1, 1, 2, 5, 5])
    classes = np.array([0, 0, 1, 1, 2, 2])
    assert per_class_auc(labels, scores, classes) == {0: 1.0, 1: 0.0, 2: 0.5}


@pytest.mark.parametrize("labels,scores,match", [
    ([1, 1, 1], [0.1, 0.2, 0.3], "both members"),
    ([1, 0], [0.1, np.nan], "NaN"),
    ([1, 0, 1], [0.1, 0.2], "differ in length"),
    ([2, 0], [0.1, 0.2], "0 \\(non-member\\) or 1"),
])
def test_bad_inputs_raise_user_errors(labels, scores, match) -> None:
    with pytest.raises(UserError, match=match):
        attack_metrics(labels, scores)
    with pytest.raises(UserError):
        tpr_at_fpr([1, 0], [0.2, 0.1], 1.5)
