"""Every interval the book prints, against a plainly written reference (issue 22).

The zoo's pooled intervals and paired differences are recomputed here by a bootstrap over
pairs of targets written out loop by loop, with scikit-learn's ROC, on the *same draws* as the
package's (one ``default_rng(seed).integers(0, N / 2, (B, N / 2))`` call: the drawn pairs of
targets), and must agree to rounding. So must the Student-t intervals over the pairs' means,
the single-target stratified bootstrap of :func:`~mcmia_helpers.metrics.attack_metrics` (members
and non-members resampled apart, in chunks of 50) and the intervals of
:mod:`mcmia_helpers.evidence`. A bootstrap over single targets, over (target, example) pairs, a
90% interval labelled 95%, a strict ``<`` at the FPR cut or a paired difference that matches
target ``i`` of one zoo with another target of the other all move these numbers; the fixture is
built so that they do (pairs of targets share an offset, targets differ in how much they leak).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from mcmia_helpers import evidence
from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.metrics import METRIC_KEYS, attack_metrics
from mcmia_helpers.zoo.evaluate import SUMMARY_KEYS, ZooScores, paired_difference, zoo_metrics

N, P, CANARIES, B = 8, 240, 24, 60
RATES = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001, "tpr_at_0_01pct_fpr": 0.0001}


def fake_zoo(seed: int, leak: float = 1.0) -> ZooScores:
    """Scores of 8 targets (4 complementary pairs) on 240 examples, the first 24 canaries.

    Each pair of targets shares an offset and each target leaks by its own amount, so the
    pair, the target and the example are different units whose resampling gives different
    intervals."""
    membership = lira_in_out_sets(P, N, 3).numpy()
    rng = np.random.default_rng(seed)
    per_target = leak * (1.0 + rng.normal(0, 0.5, N))
    per_pair = np.repeat(rng.normal(0, 0.8, N // 2), 2)
    scores = rng.normal(size=(N, P)) + per_target[:, None] * membership + per_pair[:, None]
    scores[:, :CANARIES] += 2.0 * membership[:, :CANARIES]
    canary = np.zeros(P, dtype=bool)
    canary[:CANARIES] = True
    thresholds = per_pair + rng.normal(0.5, 0.2, N)
    return ZooScores("lira_online", f"zoo{seed}", "dense", scores, thresholds, membership, canary)


def _columns(zs: ZooScores, subset: str) -> np.ndarray:
    return {"all": np.ones(P, bool), "ordinary": ~zs.canary, "canaries": zs.canary}[subset]


def plain_metrics(zs: ZooScores, rows: np.ndarray, cols: np.ndarray) -> dict[str, float]:
    """The pooled metrics of the (target, example) pairs of ``rows`` x ``cols``, by hand."""
    s = zs.scores[np.ix_(rows, cols)].ravel()
    m = zs.membership[np.ix_(rows, cols)].ravel().astype(int)
    predicted = (zs.scores[np.ix_(rows, cols)] >= zs.thresholds[rows][:, None]).ravel()
    fpr, tpr, _ = roc_curve(m, s, drop_intermediate=False)
    out = {"auc": roc_auc_score(m, s), "advantage": np.max(tpr - fpr)}
    for key, rate in RATES.items():
        # the largest TPR whose FPR is at most the rate (FPRs are multiples of 1 / n: exact)
        out[key] = tpr[np.round(fpr * (m == 0).sum()) <= rate * (m == 0).sum() + 1e-9].max()
    out["accuracy_oracle"] = 0.5 + out["advantage"] / 2
    out["accuracy_calibrated"] = (predicted[m == 1].mean() + (~predicted[m == 0]).mean()) / 2
    return out


def pair_draws(n_targets: int, n_bootstrap: int, seed: int) -> list[np.ndarray]:
    """The target rows of each resample: whole pairs (2k, 2k + 1), as many pairs as the zoo has,
    drawn with replacement."""
    draws = np.random.default_rng(seed).integers(0, n_targets // 2, size=(n_bootstrap, n_targets // 2))
    return [np.concatenate([[2 * k, 2 * k + 1] for k in d]) for d in draws]


def plain_interval(values) -> list[float]:
    return [float(v) for v in np.percentile(values, [2.5, 97.5])]


def plain_t_interval(units, bounds=None) -> tuple[float, float, float]:
    units = np.asarray(units, float)
    low, high = stats.t.interval(0.95, len(units) - 1, loc=units.mean(), scale=stats.sem(units))
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return units.mean(), low, high


def pair_means(per_target) -> np.ndarray:
    per_target = np.asarray(per_target, float)
    return (per_target[0::2] + per_target[1::2]) / 2


@pytest.fixture(scope="module")
def zoos() -> tuple[ZooScores, ZooScores]:
    return fake_zoo(1), fake_zoo(2, leak=0.6)


@pytest.mark.parametrize("subset", ["all", "ordinary", "canaries"])
def test_pooled_intervals_are_a_bootstrap_over_pairs_of_targets(zoos, subset) -> None:
    zs = zoos[0]
    cols = _columns(zs, subset)
    got = zoo_metrics(zs, subset, n_bootstrap=B, seed=4)
    point = plain_metrics(zs, np.arange(N), cols)
    boot = [plain_metrics(zs, rows, cols) for rows in pair_draws(N, B, 4)]
    for key in SUMMARY_KEYS:
        assert got["pooled"][key] == pytest.approx(point[key], abs=1e-12), key
        assert got["pooled"]["ci95"][key] == pytest.approx(plain_interval([b[key] for b in boot]),
                                                           abs=1e-12), key
    assert got["interval_unit"] == "pair of targets"


def test_mean_over_targets_is_the_t_interval_of_the_pairs_means(zoos) -> None:
    zs = zoos[0]
    got = zoo_metrics(zs, "ordinary", n_bootstrap=0)
    cols = _columns(zs, "ordinary")
    for key in SUMMARY_KEYS:
        per = [plain_metrics(zs, np.array([i]), cols)[key] for i in range(N)]
        assert got["per_target"][key] == pytest.approx(per, abs=1e-12), key
        mean, low, high = plain_t_interval(pair_means(per), bounds=(0.0, 1.0))
        entry = got["mean_over_targets"][key]
        assert (entry["mean"], entry["low"], entry["high"]) == pytest.approx((mean, low, high),
                                                                           abs=1e-12), key


@pytest.mark.parametrize("subset", ["all", "canaries"])
def test_paired_difference_resamples_the_same_pairs_in_both_zoos(zoos, subset) -> None:
    a, b = zoos
    cols = _columns(a, subset)
    got = paired_difference(a, b, subset, n_bootstrap=B, seed=9)
    everyone = np.arange(N)
    boot = [(plain_metrics(a, rows, cols), plain_metrics(b, rows, cols))
            for rows in pair_draws(N, B, 9)]
    for key in SUMMARY_KEYS:
        point = plain_metrics(a, everyone, cols)[key] - plain_metrics(b, everyone, cols)[key]
        assert got[key]["pooled"] == pytest.approx(point, abs=1e-12), key
        wanted = plain_interval([ra[key] - rb[key] for ra, rb in boot])
        assert got[key]["pooled_ci95"] == pytest.approx(wanted, abs=1e-12), key
        per = [plain_metrics(a, np.array([i]), cols)[key] - plain_metrics(b, np.array([i]), cols)[key]
               for i in range(N)]
        entry = got[key]["mean_over_targets"]
        assert (entry["mean"], entry["low"], entry["high"]) == pytest.approx(
            plain_t_interval(pair_means(per)), abs=1e-12), key
    # evidence prints the pooled change; 4 pairs of targets are too few for an interval, and
    # 8 x 120 non-members cannot resolve a TPR at 0.1% FPR (10,000 needed)
    row = evidence.paired_row(a, b, "auc", subset, n_bootstrap=B, seed=9)
    assert row["change"] == got["auc"]["pooled"]
    assert (row["low"], row["high"], row["reading"]) == (None, None, "too few targets")
    rate = evidence.paired_row(a, b, "tpr_at_0_1pct_fpr", subset, n_bootstrap=B, seed=9)
    assert rate["change"] is None and rate["reading"] == "not resolved"
    assert "10,000 non-members" in rate["note"]


def test_a_zoo_minus_its_own_copy_is_zero_with_a_zero_interval(zoos) -> None:
    a = zoos[0]
    copy = replace(a, scores=a.scores.copy(), target_zoo="copy")
    got = paired_difference(a, copy, "all", n_bootstrap=B, seed=1)
    for key in SUMMARY_KEYS:
        assert got[key]["pooled"] == 0 and got[key]["pooled_ci95"] == [0.0, 0.0], key
        assert got[key]["mean_over_targets"] == {"mean": 0.0, "low": 0.0, "high": 0.0}, key
    big = replace(a, scores=np.vstack([a.scores, a.scores]), thresholds=np.tile(a.thresholds, 2),
                  membership=np.vstack([a.membership, a.membership]))
    twin = replace(big, scores=big.scores.copy(), target_zoo="copy")
    assert evidence.paired_row(big, twin, "auc", n_bootstrap=B)["reading"] == "equivalent"


def test_evidence_pooled_row_prints_the_zoo_intervals(zoos) -> None:
    zs = zoos[0]
    row = evidence.pooled_row(zs, "ordinary", n_bootstrap=B, seed=4)
    got = zoo_metrics(zs, "ordinary", n_bootstrap=B, seed=4)["pooled"]
    nonmembers = N * (P - CANARIES) // 2
    assert row["nonmembers"] == nonmembers and row["targets"] == N
    assert row["interval"].startswith("too few targets")  # 4 pairs: no interval printed
    for key in evidence.METRICS:
        if key in RATES and RATES[key] * nonmembers < 10:
            assert row[key] is None and row[key + "_needs"] == round(10 / RATES[key]), key
        else:
            assert row[key] == got[key], key
        assert row[key + "_lo"] is None and row[key + "_hi"] is None, key
    # with 8 pairs (the same targets twice over) the zoo's own interval is printed
    big = replace(zs, scores=np.vstack([zs.scores, zs.scores]),
                  thresholds=np.tile(zs.thresholds, 2),
                  membership=np.vstack([zs.membership, zs.membership]))
    row = evidence.pooled_row(big, "ordinary", n_bootstrap=B, seed=4)
    got = zoo_metrics(big, "ordinary", n_bootstrap=B, seed=4)["pooled"]
    assert row["interval"] == ""
    assert (row["auc"], row["auc_lo"], row["auc_hi"]) == (got["auc"], *got["ci95"]["auc"])


def test_paired_target_change_is_the_t_interval_of_the_pairs_means() -> None:
    rng = np.random.default_rng(5)
    before, after = rng.normal(0.2, 0.05, 2 * N), rng.normal(0.25, 0.05, 2 * N)
    got = evidence.paired_target_change(before, after)
    mean, low, high = plain_t_interval(pair_means(after - before))
    assert (got["change"], got["low"], got["high"]) == pytest.approx((mean, low, high), abs=1e-12)
    assert got["units"] == N and got["reading"] == evidence.reading(low, high, 0.01)
    few = evidence.paired_target_change(before[:N], after[:N])  # 4 pairs: no interval
    assert few["low"] is None and few["reading"] == "too few targets"


def by_hand_exposure(scores: np.ndarray, member: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each example's membership AUC over the targets ``rows`` (repeats counted), by hand."""
    out = []
    for e in range(scores.shape[1]):
        s, m = scores[rows, e], member[rows, e].astype(bool)
        ins, outs = s[m], s[~m]
        wins = (ins[:, None] > outs[None, :]).mean() + 0.5 * (ins[:, None] == outs[None, :]).mean()
        out.append(wins)
    return np.array(out)


def test_exposure_beyond_floor_leaves_out_pairs_of_targets() -> None:
    """The interval comes from the pairs of targets (the independent units): a delete-one-pair
    jackknife over each half, a second-half pair leaving the dense and the defended zoo together;
    examples are never resampled, and the point estimate is the interval's centre."""
    n, p = 16, 30
    membership = lira_in_out_sets(p, n, 3).numpy().astype(bool)
    rng = np.random.default_rng(6)
    dense_scores = rng.normal(size=(n, p)) + rng.uniform(0, 2, p) * membership
    defended_scores = rng.normal(size=(n, p)) + rng.uniform(0, 2, p) * membership
    canary = np.zeros(p, bool)
    dense = ZooScores("lira_online", "dense", "dense", dense_scores, np.zeros(n), membership, canary)
    defended = replace(dense, scores=defended_scores, target_zoo="defended")
    keep = np.arange(p) >= 5
    got = evidence.exposure_beyond_floor(dense, defended, keep)
    first, second = np.arange(n // 2), np.arange(n // 2, n)

    def stat(rows_1, rows_2):
        before = by_hand_exposure(dense_scores, membership, rows_1)[keep]
        floor = by_hand_exposure(dense_scores, membership, rows_2)[keep]
        after = by_hand_exposure(defended_scores, membership, rows_2)[keep]
        return np.mean(np.abs(after - before)) - np.mean(np.abs(floor - before))

    point = stat(first, second)
    assert got["change"] == pytest.approx(point, abs=1e-12)
    variance = 0.0
    for half, other, first_half in ((first, second, True), (second, first, False)):
        values = []
        for k in range(len(half) // 2):
            rest = np.delete(half, [2 * k, 2 * k + 1])
            values.append(stat(rest, other) if first_half else stat(other, rest))
        values = np.array(values)
        variance += (len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum()
    half_width = stats.t.ppf(0.975, n // 2 - 2) * np.sqrt(variance)
    assert [got["low"], got["high"]] == pytest.approx([point - half_width, point + half_width],
                                                      abs=1e-12)
    assert got["low"] <= got["change"] <= got["high"]
    assert got["examples"] == p - 5 and got["pairs"] == n // 2
    assert got["reading"] == evidence.reading(got["low"], got["high"], evidence.MARGINS["auc"])
    # 8 targets are 4 pairs: too few for an interval
    few = evidence.exposure_beyond_floor(evidence.take_targets(dense, range(8)),
                                         evidence.take_targets(defended, range(8)), keep)
    assert few["low"] is None and few["reading"] == "too few targets"


# --------------------------------------------------------------------------- one target


def plain_single_target(labels, scores, threshold) -> dict[str, float]:
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    n_neg = (labels == 0).sum()
    out = {"auc": roc_auc_score(labels, scores), "advantage": np.max(tpr - fpr)}
    out["tpr_at_1pct_fpr"] = tpr[np.round(fpr * n_neg) <= 0.01 * n_neg + 1e-9].max()
    out["tpr_at_0_1pct_fpr"] = tpr[np.round(fpr * n_neg) <= 0.001 * n_neg + 1e-9].max()
    if threshold is None:
        out["accuracy"] = 0.5 + out["advantage"] / 2
    else:
        predicted = scores >= threshold
        out["accuracy"] = (predicted[labels == 1].mean() + (~predicted[labels == 0]).mean()) / 2
    return out


@pytest.mark.parametrize("threshold", [None, 0.4])
def test_single_target_intervals_are_a_stratified_bootstrap(threshold) -> None:
    """500 non-members, so 1% FPR allows exactly 5 false positives; 130 resamples drawn as
    attack_metrics draws them (chunks of 50: non-members, then members)."""
    rng = np.random.default_rng(8)
    labels = np.r_[np.ones(300), np.zeros(500)].astype(int)
    scores = rng.normal(size=800) + 0.9 * labels
    got = attack_metrics(labels, scores, threshold=threshold, n_bootstrap=130, seed=3)
    point = plain_single_target(labels, scores, threshold)
    negatives = np.sort(scores[labels == 0])[::-1]
    assert point["tpr_at_1pct_fpr"] == (scores[labels == 1] > negatives[5]).mean()  # 5 FPs
    draw = np.random.default_rng(3)
    members, nonmembers = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boot = []
    for start in range(0, 130, 50):
        b = min(50, 130 - start)
        picks_out = nonmembers[draw.integers(0, len(nonmembers), size=(b, len(nonmembers)))]
        picks_in = members[draw.integers(0, len(members), size=(b, len(members)))]
        for rows in np.hstack([picks_out, picks_in]):
            boot.append(plain_single_target(labels[rows], scores[rows], threshold))
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(point[key], abs=1e-12), key
        assert got["ci95"][key] == pytest.approx(plain_interval([b[key] for b in boot]), abs=1e-12), key
