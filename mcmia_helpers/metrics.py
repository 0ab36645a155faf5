"""Privacy metrics: turn membership scores into ROC, AUC, advantage and TPR at low FPR (chapter 1).

Conventions used by every attack and metric of the book:

* a *score* is one number per queried example, **higher = more likely a member**;
* a *label* is 1 for a member (the target trained on it) and 0 for a non-member;
* a threshold ``t`` predicts "member" for ``score >= t`` (as :func:`sklearn.metrics.roc_curve`).

The paper reports the balanced attack accuracy. Next to it we report what the membership
inference literature has moved to since Carlini et al. (2022): the ROC AUC, the membership
advantage ``max(TPR - FPR)`` (Yeom et al. 2018), and the true-positive rate at a low
false-positive rate (1% and 0.1%), each with a stratified bootstrap 95% interval.

An attack's *accuracy* depends on a threshold. :func:`attack_metrics` takes the threshold the
attacker chose without the target's membership labels (calibrated on shadow models: "calibrated"),
or, when none is given, uses the best threshold on the evaluated labels themselves, which no
real attacker can know ("oracle"; it equals ``0.5 + advantage / 2``). The record says which.
"""

from __future__ import annotations

import math

import numpy as np

from mcmia_helpers.errors import UserError

#: The false-positive rate at which each TPR metric is read.
FPR_OF: dict[str, float] = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001,
                            "tpr_at_0_01pct_fpr": 0.0001}

#: A TPR at FPR ``f`` is printed only where ``f x non-members`` allows this many false positives:
#: with fewer, the threshold sits on one or two non-member scores and the rate is noise.
MIN_FALSE_POSITIVES = 10


def resolves(metric: str, nonmembers: int) -> bool:
    """Whether ``metric`` can be printed from ``nonmembers`` pooled non-member scores: always for
    AUC and accuracies; for a TPR at FPR ``f`` only where ``f * nonmembers >= 10``."""
    fpr = FPR_OF.get(metric)
    return fpr is None or fpr * nonmembers >= MIN_FALSE_POSITIVES - 1e-9


def nonmembers_needed(metric: str) -> int:
    """The pooled non-member scores a TPR metric needs to be resolved (0 for the others)."""
    fpr = FPR_OF.get(metric)
    return 0 if fpr is None else int(math.ceil(MIN_FALSE_POSITIVES / fpr - 1e-9))


#: The keys of every metrics record (and of its ``ci95`` entry).
METRIC_KEYS = ("accuracy", "auc", "advantage", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr")

#: The false-positive rates at which :func:`compact_roc` samples a ROC curve: 0, then 41
#: log-spaced rates from 1e-4 to 1 (ten per decade, three significant digits), so 0.1% and 1%
#: are exact grid points. Enough to draw a ROC on log axes; small enough for every record.
ROC_FPR_GRID: tuple[float, ...] = (0.0,) + tuple(float(f"{10 ** (k / 10):.3g}") for k in range(-40, 1))


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise UserError(f"labels ({labels.size}) and scores ({scores.size}) differ in length: "
                        "pass one score per labelled example")
    if not np.isin(labels, (0, 1)).all():
        raise UserError("membership labels must be 0 (non-member) or 1 (member)")
    if labels.min(initial=1) == labels.max(initial=0):
        raise UserError("membership metrics need both members (1) and non-members (0) in the labels")
    if not np.isfinite(scores).all():
        raise UserError("membership scores contain NaN or infinity: drop the examples the attack "
                        "did not score before computing metrics")
    return labels, scores


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of "member iff score >= threshold", at every distinct score.

    The first point is ``(0, 0)`` at threshold ``+inf``; thresholds decrease. The same points
    as scikit-learn's ``roc_curve(..., drop_intermediate=False)``: no low-FPR point is dropped
    (plot it on log axes to see the regime that matters for privacy).
    """
    labels, scores = _check(labels, scores)
    tp, fp, distinct = _curves(scores, labels, np.ones((1, len(labels))))
    thresholds = np.r_[np.inf, distinct]
    return fp[0] / (labels == 0).sum(), tp[0] / labels.sum(), thresholds


def auc(labels, scores) -> float:
    """Area under the ROC curve: the chance that a random member outscores a random non-member
    (ties count one half). 0.5 is guessing."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(_trapezoid(tpr, fpr))


def tpr_at_fpr(labels, scores, fpr: float) -> float:
    """The largest TPR among thresholds whose FPR is at most ``fpr`` (no interpolation).

    Tied scores share one threshold, so a tie between a member and a non-member cannot be split
    to reach a lower FPR. With ``n`` non-members the achievable FPRs are multiples of ``1/n``: with
    500 non-members, a target of 0.1% is only met at FPR 0, i.e. the TPR reported is that of the
    members scored strictly above every non-member. The value is then a conservative (lower)
    estimate; the bootstrap interval shows how little such a small set can say.
    """
    if not 0 <= fpr <= 1:
        raise UserError(f"fpr must lie in [0, 1] (got {fpr}): e.g. 0.01 for 1%")
    roc_fpr, roc_tpr, _ = roc_curve(labels, scores)
    ok = roc_fpr <= fpr + 1e-12
    return float(roc_tpr[ok].max())


def compact_roc(labels, scores, fpr_grid=ROC_FPR_GRID, decimals: int = 5) -> dict[str, list[float]]:
    """The ROC curve sampled at fixed false-positive rates: ``{"fpr": [...], "tpr": [...]}``.

    The TPR at each grid FPR follows the rule of :func:`tpr_at_fpr` (the largest TPR among the
    thresholds whose FPR is at most that rate, no interpolation), so the curve is a monotone
    step-wise lower envelope of the exact ROC, ends at ``(1, 1)``, and its values at 0.01 and
    0.001 are the record's ``tpr_at_1pct_fpr`` and ``tpr_at_0_1pct_fpr``. Rounded to ``decimals``
    so that every grid record can carry one (about 40 points); the default grid is
    :data:`ROC_FPR_GRID`. Used by :func:`attack_metrics` and the results explorer (chapter 5).
    """
    roc_fpr, roc_tpr, _ = roc_curve(labels, scores)
    return _sample_roc(roc_fpr, roc_tpr, fpr_grid, decimals)


def _sample_roc(roc_fpr: np.ndarray, roc_tpr: np.ndarray, fpr_grid, decimals: int) -> dict[str, list[float]]:
    """TPR of an exact (non-decreasing) ROC at each rate of ``fpr_grid``; see :func:`compact_roc`."""
    grid = np.asarray(fpr_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or grid.min() < 0 or grid.max() > 1:
        raise UserError("fpr_grid must be a non-empty list of rates in [0, 1], e.g. metrics.ROC_FPR_GRID")
    # Both coordinates are non-decreasing, so the last point with FPR <= g has the largest TPR.
    last = np.searchsorted(roc_fpr, grid + 1e-12, side="right") - 1
    tpr = np.asarray(roc_tpr)[last]
    return {"fpr": [float(f) for f in grid],
            "tpr": [round(float(t), decimals) for t in tpr]}


def advantage(labels, scores) -> float:
    """Membership advantage ``max over thresholds of TPR - FPR`` (Yeom et al. 2018), in [0, 1]."""
    roc_fpr, roc_tpr, _ = roc_curve(labels, scores)
    return float(np.max(roc_tpr - roc_fpr))


def balanced_accuracy(labels, predictions) -> float:
    """``(TPR + TNR) / 2`` of hard member (1) / non-member (0) predictions: 0.5 is guessing,
    whatever the ratio of members to non-members."""
    labels, predictions = _check(labels, predictions)
    if not np.isin(predictions, (0, 1)).all():
        raise UserError("predictions must be 0 or 1: threshold the scores first")
    tpr = predictions[labels == 1].mean()
    tnr = 1.0 - predictions[labels == 0].mean()
    return float((tpr + tnr) / 2)


def best_threshold(labels, scores) -> float:
    """The threshold with the highest balanced accuracy on ``labels`` (ties: the highest one).

    Used by attacks on the *attacker's own* labelled data (shadow models), never on the
    target's membership labels. Returns a finite value: for the ``+inf`` corner (nobody is a
    member) the largest score plus one.
    """
    roc_fpr, roc_tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(roc_tpr - roc_fpr))
    t = float(thresholds[best])
    return t if np.isfinite(t) else float(np.max(scores)) + 1.0


# --------------------------------------------------------------------------- vectorised core


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid rule along the last axis (``np.trapezoid`` is NumPy >= 2 only)."""
    return np.sum((x[..., 1:] - x[..., :-1]) * (y[..., 1:] + y[..., :-1]) / 2, axis=-1)


def _curves(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    """Weighted ROC points for many weightings at once.

    ``weights`` is ``(B, N)`` (how often each example is in each bootstrap sample). Returns
    ``tp, fp`` of shape ``(B, G + 1)`` (G distinct scores, descending, with a leading 0 point)
    and the distinct scores.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    w = weights[:, order].astype(np.float64)
    is_member = labels[order] == 1
    tp = np.cumsum(w * is_member, axis=1)
    fp = np.cumsum(w * ~is_member, axis=1)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # end of each run of equal scores
    zeros = np.zeros((w.shape[0], 1))
    return np.hstack([zeros, tp[:, last]]), np.hstack([zeros, fp[:, last]]), s[last]


def _metrics_from_curves(tp, fp, n_pos, n_neg, labels, scores, weights, threshold):
    tpr = tp / n_pos[:, None]
    fpr = fp / n_neg[:, None]
    out = {
        "auc": _trapezoid(tpr, fpr),
        "advantage": np.max(tpr - fpr, axis=1),
        "tpr_at_1pct_fpr": np.max(np.where(fpr <= 0.01 + 1e-12, tpr, 0.0), axis=1),
        "tpr_at_0_1pct_fpr": np.max(np.where(fpr <= 0.001 + 1e-12, tpr, 0.0), axis=1),
    }
    if threshold is None:
        out["accuracy"] = 0.5 + out["advantage"] / 2
    else:
        predicted = scores >= threshold
        tpr_t = (weights * (predicted & (labels == 1))).sum(1) / n_pos
        tnr_t = (weights * (~predicted & (labels == 0))).sum(1) / n_neg
        out["accuracy"] = (tpr_t + tnr_t) / 2
    return out


def _stratified_weights(labels: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``(B, N)`` counts: each row resamples members and non-members with replacement, separately."""
    n = len(labels)
    weights = np.zeros((n_bootstrap, n), dtype=np.float64)
    rows = np.arange(n_bootstrap)[:, None]
    for cls in (0, 1):
        pos = np.flatnonzero(labels == cls)
        draws = pos[rng.integers(0, len(pos), size=(n_bootstrap, len(pos)))]
        flat = (rows * n + draws).ravel()
        weights += np.bincount(flat, minlength=n_bootstrap * n).reshape(n_bootstrap, n)
    return weights


def attack_metrics(labels, scores, threshold: float | None = None, n_bootstrap: int = 200,
                   seed: int = 0) -> dict:
    """All metrics of one attack, with stratified bootstrap 95% intervals.

    Returns ``{accuracy, auc, advantage, tpr_at_1pct_fpr, tpr_at_0_1pct_fpr, ci95: {key: [lo,
    hi]}, roc: {fpr, tpr}, threshold, threshold_kind, n_members, n_nonmembers, n_bootstrap}``.
    ``roc`` is the compact ROC of :func:`compact_roc` (the TPR at each rate of
    :data:`ROC_FPR_GRID`, rounded to 5 decimals), so that stored records can be plotted
    without the scores. ``accuracy`` is the
    balanced accuracy at ``threshold`` ("calibrated": chosen by the attacker without these
    labels), or at the best threshold on these labels when ``threshold`` is None ("oracle",
    ``0.5 + advantage / 2``; no real attacker has it). The intervals resample members and
    non-members separately (so every resample keeps both) and take the 2.5 and 97.5 percentiles;
    the oracle accuracy is re-optimised in each resample. ``n_bootstrap=0`` skips them.
    """
    labels, scores = _check(labels, scores)
    if threshold is not None and not np.isfinite(threshold):
        raise UserError(f"threshold {threshold} is not finite: pass a number or None for the oracle")
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    ones = np.ones((1, len(labels)))
    tp, fp, _ = _curves(scores, labels, ones)
    point = _metrics_from_curves(tp, fp, np.array([n_pos]), np.array([n_neg]), labels, scores,
                                 ones, threshold)
    record: dict = {k: float(point[k][0]) for k in METRIC_KEYS}
    roc = _sample_roc(fp[0] / n_neg, tp[0] / n_pos, ROC_FPR_GRID, 5)
    ci: dict = {}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        for start in range(0, n_bootstrap, 50):  # chunks bound the memory at (50, N)
            b = min(50, n_bootstrap - start)
            weights = _stratified_weights(labels, b, rng)
            tp, fp, _ = _curves(scores, labels, weights)
            chunk = _metrics_from_curves(tp, fp, np.full(b, n_pos), np.full(b, n_neg), labels,
                                         scores, weights, threshold)
            for k in METRIC_KEYS:
                ci.setdefault(k, []).append(chunk[k])
        ci = {k: [float(v) for v in np.percentile(np.concatenate(ci[k]), [2.5, 97.5])]
              for k in METRIC_KEYS}
    record["ci95"] = ci
    record["roc"] = roc
    record["threshold"] = None if threshold is None else float(threshold)
    record["threshold_kind"] = "oracle" if threshold is None else "calibrated"
    record["n_members"] = n_pos
    record["n_nonmembers"] = n_neg
    record["n_bootstrap"] = int(n_bootstrap)
    return record


def per_class_auc(labels, scores, classes) -> dict[int, float]:
    """AUC of the attack within each true class (classes with both members and non-members)."""
    labels, scores = _check(labels, scores)
    classes = np.asarray(classes).ravel()
    out = {}
    for c in np.unique(classes):
        mask = classes == c
        if 0 < labels[mask].sum() < mask.sum():
            out[int(c)] = auc(labels[mask], scores[mask])
    return out


def metrics_table(results: dict[str, dict]):
    """A pandas table of ``{attack: attack_metrics(...)}``: one row per attack, intervals as text."""
    import pandas as pd

    rows = []
    for name, m in results.items():
        row = {"attack": name}
        for k in METRIC_KEYS:
            row[k] = m[k]
            lo_hi = m.get("ci95", {}).get(k)
            row[f"{k}_ci95"] = f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else ""
        row["threshold"] = m.get("threshold_kind", "")
        rows.append(row)
    return pd.DataFrame(rows).set_index("attack")


def mean_interval(values, confidence: float = 0.95,
                  bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """``(mean, low, high)``: a Student-t interval for the mean of independent runs (seeds).

    Used to compare defences over seeds, where each seed is a new split, target and attacker.
    With one value the interval is that value (no spread can be estimated from one run); NaN
    values are dropped. Few seeds give wide intervals: with 3 seeds the half-width is 2.5
    standard errors. ``bounds`` clips the interval to a metric's range, e.g. ``(0, 1)`` for
    rates (the t interval is symmetric and can leave it).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise UserError("mean_interval got no finite value: pass one number per seed")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must lie in (0, 1) (got {confidence}): e.g. 0.95")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high
