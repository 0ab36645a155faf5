"""Verdicts from model zoos (chapter 6): pooled metrics, paired differences, power, exposure
against a noise floor, the class spread, and a verdict composed from computed directions.

A zoo (:mod:`mcmia_helpers.zoo`) gives every defence many targets on one pool, paired model by
model with the dense zoo. This module turns the leave-one-out scores of
:func:`~mcmia_helpers.zoo.evaluate.attack_zoo` into what a chapter states:

* :func:`pooled_row`: AUC and TPR at 1%, 0.1% and 0.01% FPR pooled over every (target,
  example) pair, with the zoo's bootstrap-over-pairs-of-targets intervals, plus calibrated and
  oracle attack accuracy (second, as the book's evidence standards ask);
* :func:`paired_row`: one zoo minus another, target by target on the same examples, with an
  interval and a one-word :func:`direction` (the only place a verdict's direction comes from);
* :func:`targets_needed`: how many targets an interval of the wanted width would need
  (intervals over independent units shrink as one over the square root of their number);
* :func:`split_exposure` / :func:`exposure_change`: each example's exposure measured on two
  disjoint halves of the targets; the dense zoo's two halves (models with different seeds on
  the same pool) are the retraining noise floor that a defence's change must exceed;
* :func:`class_spread`: the attack's AUC within each class, per target, and its spread (Yuan
  and Zhang's class divergence), paired between zoos;
* :func:`reading`, :data:`MARGINS`, :func:`~mcmia_helpers.metrics.resolves`, :func:`choose_decider`, :func:`verdict_word`
  and :func:`verdict_sentence`: the four readings of a change, what the data resolve, the attack
  that decides, and the verdict of a comparison by a stated rule, never typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import (FPR_OF, MIN_FALSE_POSITIVES, mean_interval,  # noqa: F401
                                   nonmembers_needed, per_class_auc, resolves)
from mcmia_helpers.zoo.evaluate import (ZooScores, _subset_columns, _unit_means,
                                        example_exposure, paired_difference, zoo_metrics)

#: The pooled metrics a chapter reports, AUC and the low-FPR rates first, attack accuracy last.
METRICS: dict[str, str] = {
    "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR @ 1% FPR",
    "tpr_at_0_1pct_fpr": "TPR @ 0.1% FPR",
    "tpr_at_0_01pct_fpr": "TPR @ 0.01% FPR",
    "accuracy_calibrated": "accuracy (calibrated)",
    "accuracy_oracle": "accuracy (oracle)",
}


#: An interval needs at least this many independent units (pairs of targets in a zoo).
MIN_PAIRS = 8

#: The equivalence margins, fixed before any comparison was looked at, as fractions (0.005 is
#: half a percentage point). A change whose whole 95% interval lies inside ``[-margin, +margin]`` is
#: read "equivalent" (see :func:`reading`); :data:`MARGIN_REASONS` says why each is the size it is.
MARGINS: dict[str, float] = {
    "auc": 0.01,
    "tpr_at_1pct_fpr": 0.01,
    "tpr_at_0_1pct_fpr": 0.005,
    "tpr_at_0_01pct_fpr": 0.005,
    "accuracy_calibrated": 0.01,
    "accuracy_oracle": 0.01,
}

#: One sentence per margin, saying why a change inside it does not matter.
MARGIN_REASONS: dict[str, str] = {
    "auc": "±0.01 AUC: 2% of the way from chance (0.5) to a perfect attack; a smaller shift of "
           "the average ranking is negligible next to the low-FPR rates, which carry the risk to "
           "individuals",
    "tpr_at_1pct_fpr": "±1 point of TPR at 1% FPR: a change smaller than the FPR itself leaves "
                       "the attack's precision where it was",
    "tpr_at_0_1pct_fpr": "±0.5 points of TPR at 0.1% FPR: five times the FPR; below it, fewer "
                         "than one member in 200 changes side",
    "tpr_at_0_01pct_fpr": "±0.5 points of TPR at 0.01% FPR: the same absolute bound as at 0.1%, "
                          "the smallest change the book's zoos could ever resolve there",
    "accuracy_calibrated": "±1 point of attack accuracy: a tenth of the paper's largest claimed "
                           "drop (13.6 points), the paper's own unit",
    "accuracy_oracle": "±1 point of attack accuracy: as for the calibrated threshold",
}

#: The four readings of a change (:func:`reading`), and what a table prints where it cannot read.
READINGS = ("higher", "lower", "equivalent", "inconclusive")


def reading(low: float | None, high: float | None, margin: float) -> str:
    """One of :data:`READINGS` for a change with 95% interval ``[low, high]``.

    ``equivalent`` when the whole interval lies inside ``[-margin, +margin]`` (checked first: a
    change too small to matter is not read as a direction, however narrow its interval);
    ``higher`` / ``lower`` when the whole interval lies above / below zero; ``inconclusive``
    otherwise (it crosses zero and leaves the margin), and when there is no interval.
    """
    if margin < 0 or not math.isfinite(margin):
        raise UserError(f"an equivalence margin must be a finite number >= 0 (got {margin})")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if low > high:
        raise UserError(f"an interval needs low <= high (got [{low}, {high}])")
    if -margin <= low and high <= margin:
        return "equivalent"
    if high < 0:
        return "lower"
    if low > 0:
        return "higher"
    return "inconclusive"


def choose_decider(rows: Mapping[str, Mapping[str, float | None]], nonmembers: int) -> tuple[str, str]:
    """The attack that decides, chosen once on the *undefended* model (chapter 1's rule).

    ``rows`` maps each candidate attack to its metrics on the undefended model or zoo (keys of
    :data:`METRICS`); ``nonmembers`` is how many non-member scores those metrics pooled. The rule:
    the highest TPR at the lowest FPR that ``nonmembers`` resolves (:func:`~mcmia_helpers.metrics.resolves`), AUC breaking
    ties; a missing or NaN rate counts as lowest. Where the non-members resolve no TPR at all
    (fewer than 1,000: a small zoo), the highest AUC decides. Returns ``(attack, metric)``."""
    if not rows:
        raise UserError("choose_decider needs at least one attack's metrics")
    usable = [m for m in sorted(FPR_OF, key=FPR_OF.get) if resolves(m, nonmembers)]
    metric = usable[0] if usable else "auc"

    def key(name: str) -> tuple[float, float]:
        tpr, auc = rows[name].get(metric), rows[name].get("auc")
        as_number = [v if v is not None and math.isfinite(v) else -math.inf for v in (tpr, auc)]
        return as_number[0], as_number[1]

    return max(rows, key=key), metric


def direction(low: float | None, high: float | None) -> str:
    """``"lower"`` / ``"higher"`` when the whole interval ``[low, high]`` lies below / above
    zero, else ``"no clear change"`` (also when there is no interval)."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no clear change"
    if high < 0:
        return "lower"
    if low > 0:
        return "higher"
    return "no clear change"


def pooled_row(zs: ZooScores, subset: str = "all", n_bootstrap: int = 200,
               seed: int = 0) -> dict[str, float | None]:
    """The pooled metrics of one attack on one zoo for ``subset`` (``all``, ``ordinary``,
    ``canaries``): ``{metric: value, metric + "_lo": ..., metric + "_hi": ...}`` for every
    metric of :data:`METRICS`, plus the pooled member and non-member counts. Empty dict when the
    subset cannot be scored (for example a zoo without canaries).

    Only what the data resolve is given: a TPR whose FPR the pooled non-members cannot resolve
    (:func:`~mcmia_helpers.metrics.resolves`) is ``None``, with ``metric + "_needs"`` the non-members it would need; an
    interval needs :data:`MIN_PAIRS` pairs of targets, else both bounds are ``None`` and
    ``"interval"`` says "too few targets"."""
    m = zoo_metrics(zs, subset, n_bootstrap=n_bootstrap, seed=seed)
    if m is None:
        return {}
    nonmembers = m["n_pooled_nonmembers"]
    enough = m["n_targets"] // 2 >= MIN_PAIRS
    row: dict[str, float | None] = {"members": m["n_pooled_members"], "nonmembers": nonmembers,
                                    "targets": m["n_targets"],
                                    "interval": "" if enough else too_few_targets(m["n_targets"])}
    for key in METRICS:
        ci = m["pooled"]["ci95"].get(key) if enough else None
        if resolves(key, nonmembers):
            row[key] = value = m["pooled"][key]
            low, high = ci if ci else (None, None)
            if low is not None and value is not None and not low - 1e-12 <= value <= high + 1e-12:
                low = high = None  # an interval that excludes its estimate is not printed
            row[key + "_lo"], row[key + "_hi"] = low, high
        else:
            row[key] = row[key + "_lo"] = row[key + "_hi"] = None
            row[key + "_needs"] = nonmembers_needed(key)
    return row


def too_few_targets(n_targets: int) -> str:
    """What a table prints instead of an interval over too few pairs of targets."""
    return f"too few targets ({n_targets // 2} pairs; {MIN_PAIRS} needed)"


def paired_rows(a: ZooScores, b: ZooScores, subset: str = "all", n_bootstrap: int = 200,
                seed: int = 0, metrics: Sequence[str] = tuple(METRICS)) -> list[dict[str, object]]:
    """``a`` minus ``b`` (two zoos of one pool and membership matrix, target by target) in each of
    ``metrics``, from one bootstrap over pairs of targets applied to both zoos at once
    (:func:`~mcmia_helpers.zoo.evaluate.paired_difference`).

    One dict per metric: ``metric``, ``change``, ``low``, ``high``, ``margin``, ``reading`` (one
    of :data:`READINGS`, or ``"not resolved"`` / ``"too few targets"``), ``note`` (what a table
    prints where there is no reading: the non-members a rate needs, or the pairs an interval
    needs), ``targets`` and ``nonmembers``. A TPR the pooled non-members cannot resolve has no
    change; an interval over fewer than :data:`MIN_PAIRS` pairs has no bounds."""
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise UserError(f"unknown metric '{bad[0]}': choose one of {', '.join(METRICS)}")
    n = min(len(a.scores), len(b.scores))
    diff = paired_difference(a, b, subset, n_bootstrap=n_bootstrap, seed=seed)
    cols = _subset_columns(a, subset)
    nonmembers = int((~a.membership[:n][:, cols].astype(bool)).sum())
    rows = []
    for metric in metrics:
        row: dict[str, object] = {"metric": metric, "change": None, "low": None, "high": None,
                                  "margin": MARGINS[metric], "targets": n,
                                  "nonmembers": nonmembers, "note": ""}
        if diff is None:
            row |= {"reading": "not resolved", "note": f"no {subset} examples to score"}
        elif not resolves(metric, nonmembers):
            row |= {"reading": "not resolved",
                    "note": f"needs {nonmembers_needed(metric):,} non-members ({nonmembers:,} here)"}
        else:
            entry = diff[metric]
            row["change"] = entry["pooled"]
            if n // 2 < MIN_PAIRS:
                row |= {"reading": "too few targets", "note": too_few_targets(n)}
            else:
                low, high = entry["pooled_ci95"] or (None, None)
                if low is not None and not low - 1e-12 <= row["change"] <= high + 1e-12:
                    # A percentile interval that excludes its own estimate: the statistic jumps
                    # between a few false positives; no reading rests on it.
                    row |= {"reading": "not resolved",
                            "note": "estimate outside its bootstrap interval: not read"}
                else:
                    row |= {"low": low, "high": high,
                            "reading": reading(low, high, MARGINS[metric])}
        rows.append(row)
    return rows


def comparison_rows(a: ZooScores, b: ZooScores, subsets: Sequence[str] = ("ordinary", "canaries"),
                    n_bootstrap: int = 200, seed: int = 0,
                    **labels: object) -> list[dict[str, object]]:
    """The verdict table's rows of one comparison: :func:`paired_rows` for every metric of
    :data:`METRICS` on each subset (``examples``), each row carrying ``labels`` (for example
    ``family=..., comparison=..., attacker=...``). A subset with no examples (a zoo without
    canaries) gives no rows."""
    rows = []
    for subset in subsets:
        if not _subset_columns(a, subset).any():
            continue
        for row in paired_rows(a, b, subset, n_bootstrap, seed):
            rows.append({**labels, "examples": subset, **row})
    return rows


def _number(value: object) -> float | None:
    """``value`` as a float, or ``None`` where it is missing (``None`` or NaN, as pandas stores a
    missing change)."""
    if value is None:
        return None
    value = float(value)  # type: ignore[arg-type]
    return None if math.isnan(value) else value


#: Metrics shown in percentage points (rates and accuracies); AUC keeps its own unit.
IN_POINTS = frozenset(METRICS) - {"auc"}


def format_change(row: Mapping[str, object]) -> str:
    """A change as a table prints it, in one unit per quantity: percentage points for rates and
    accuracies (``"+1.23 [+0.40, +2.05]"``), AUC as itself (``"+0.012 [+0.004, +0.020]"``); where
    there is no interval, the point and why (``"+0.004 (too few targets ...)"``), and where there
    is no change the note alone."""
    change = _number(row.get("change"))
    if change is None:
        return str(row.get("note") or "-")
    scale, digits = (100.0, 2) if row["metric"] in IN_POINTS else (1.0, 3)
    text = f"{scale * change:+.{digits}f}"
    if _number(row.get("low")) is None or _number(row.get("high")) is None:
        return f"{text} ({row['note']})" if row.get("note") else text
    return f"{text} [{scale * float(row['low']):+.{digits}f}, {scale * float(row['high']):+.{digits}f}]"


def format_pooled(row: Mapping[str, object], metric: str) -> str:
    """One pooled metric of a :func:`pooled_row` as a table prints it: rates and accuracies in
    percent (``"4.57% [3.90, 5.21]"``), AUC as itself (``"0.624 [0.612, 0.637]"``), the point
    alone where the interval rests on too few targets, and where the rate is not resolved the
    non-members it would need (``"needs 100,000 non-members"``)."""
    value = row.get(metric)
    if value is None:
        needs = row.get(metric + "_needs")
        return f"needs {needs:,} non-members" if needs else "-"
    percent = metric in IN_POINTS
    scale, digits, unit = (100.0, 2, "%") if percent else (1.0, 3, "")
    text = f"{scale * float(value):.{digits}f}{unit}"
    low, high = row.get(metric + "_lo"), row.get(metric + "_hi")
    if low is None or high is None:
        return text
    return f"{text} [{scale * float(low):.{digits}f}, {scale * float(high):.{digits}f}]"


def paired_row(a: ZooScores, b: ZooScores, metric: str, subset: str = "all",
               n_bootstrap: int = 200, seed: int = 0) -> dict[str, object]:
    """One metric of :func:`paired_rows`: ``a`` minus ``b`` with its interval and reading."""
    return paired_rows(a, b, subset, n_bootstrap, seed, metrics=(metric,))[0]


def targets_needed(n_targets: int, half_width: float, wanted_half_width: float) -> int:
    """Targets an interval of half-width ``wanted_half_width`` would need, from one of
    ``half_width`` on ``n_targets`` (widths shrink as ``1 / sqrt(n)``), rounded up to whole
    pairs of targets. ``n_targets`` when the interval is already narrow enough. The ratio is
    rounded to 9 significant digits first, so that floating-point noise does not cost a pair:
    ``8 * (0.07 / 0.01) ** 2`` is ``392.00000000000006`` in floating point, and 392 targets."""
    if n_targets < 1 or wanted_half_width <= 0 or not math.isfinite(half_width):
        raise UserError("targets_needed needs n_targets >= 1, a finite half-width and a positive "
                        "wanted half-width")
    if half_width <= wanted_half_width:
        return int(n_targets)
    n = float(f"{n_targets * (half_width / wanted_half_width) ** 2:.9g}")
    return int(2 * math.ceil(n / 2))


def take_targets(zs: ZooScores, rows: Sequence[int]) -> ZooScores:
    """The scores of some targets of a zoo only (their own leave-one-out scores unchanged)."""
    rows = np.asarray(rows, dtype=int)
    return ZooScores(zs.attack, zs.target_zoo, zs.shadow_zoo, zs.scores[rows], zs.thresholds[rows],
                     zs.membership[rows], zs.canary,
                     [zs.shadows[i] for i in rows] if zs.shadows else [], zs.note)


def halves(n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the targets made of whole complementary pairs (``2k, 2k + 1``), so
    every example is a member of the same number of targets in each half."""
    if n_targets < 4 or n_targets % 4:
        raise UserError(f"splitting a zoo into two halves of whole pairs needs a multiple of 4 "
                        f"models (got {n_targets}): use --models 8, 16 or 32")
    first = np.arange(n_targets // 2)
    return first, np.arange(n_targets // 2, n_targets)


@dataclass
class ExposureChange:
    """Per-example exposure of one zoo half against another (see :func:`exposure_change`)."""

    before: np.ndarray
    after: np.ndarray
    flagged_before: np.ndarray
    flagged_after: np.ndarray

    def summary(self, subset: np.ndarray | None = None) -> dict[str, float]:
        """Mean absolute change of exposure, its rank correlation, and how many examples are
        flagged (by at least half the targets that trained on them) only after / only before."""
        keep = np.ones(len(self.before), dtype=bool) if subset is None else np.asarray(subset, bool)
        b, a = self.before[keep], self.after[keep]
        fb, fa = self.flagged_before[keep], self.flagged_after[keep]
        union = (fb | fa).sum()
        return {"examples": int(keep.sum()), "mean_abs_change": float(np.abs(a - b).mean()),
                "mean_change": float((a - b).mean()),
                "rank_correlation": _rank_correlation(b, a),
                "flagged_before": int(fb.sum()), "flagged_after": int(fa.sum()),
                "newly_exposed": int((fa & ~fb).sum()), "no_longer_exposed": int((fb & ~fa).sum()),
                "jaccard": float((fb & fa).sum() / union) if union else math.nan}


def _rank_correlation(before: np.ndarray, after: np.ndarray) -> float:
    """Spearman's rank correlation, NaN where it is not defined (fewer than 3 examples, or one
    side constant, as for canaries that every model fits perfectly)."""
    from scipy.stats import spearmanr

    if len(before) < 3 or np.ptp(before) == 0 or np.ptp(after) == 0:
        return math.nan
    return float(spearmanr(before, after).statistic)


def split_exposure(zs: ZooScores, rows: Sequence[int], fpr: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """Each example's exposure on the targets ``rows`` only: its membership AUC (chance that its
    score as a member beats its score as a non-member) and whether at least half of the targets
    that trained on it flag it at the pooled threshold of false-positive rate ``fpr``."""
    e = example_exposure(take_targets(zs, rows), fpr)
    return e["auc"], e["flagged_in"] >= 0.5


def exposure_change(before: ZooScores, after: ZooScores, fpr: float = 0.001) -> ExposureChange:
    """Exposure under ``before`` on the first half of its targets against exposure under
    ``after`` on the *second* half. With ``before`` and ``after`` the same dense zoo this is the
    noise floor: two sets of models with different seeds on the same pool. With ``after`` a
    defended zoo the models of its second half descend from the dense zoo's second half, so the
    two halves share no model in either comparison and the floor and the defence are measured
    alike."""
    if before.scores.shape != after.scores.shape:
        raise UserError("exposure_change needs two zoos of one pool with as many targets: "
                        "use the same --models for both")
    first, second = halves(len(before.scores))
    auc_b, flag_b = split_exposure(before, first, fpr)
    auc_a, flag_a = split_exposure(after, second, fpr)
    return ExposureChange(auc_b, auc_a, flag_b, flag_a)


def _weighted_exposure(s: np.ndarray, m: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each example's membership AUC over the targets (rows of ``s``/``m``) for every row of
    target ``weights`` ``(B, T)``: :func:`~mcmia_helpers.zoo.evaluate.example_exposure`'s ``auc``
    when the weights are all one, a bootstrap resample of the targets otherwise. ``(B, P)``."""
    m = m.astype(bool)
    s = s.astype(np.float64)
    # beats[p, i, j]: target i's score of example p beats target j's (ties count one half), where
    # i trained on p and j did not.
    beats = (s.T[:, :, None] > s.T[:, None, :]) + 0.5 * (s.T[:, :, None] == s.T[:, None, :])
    beats = beats * (m.T[:, :, None] & ~m.T[:, None, :])
    num = np.einsum("bi,pij,bj->bp", weights, beats, weights, optimize=True)
    den = (weights @ m.astype(np.float64)) * (weights @ (~m).astype(np.float64))
    return num / np.maximum(den, 1e-12)


def exposure_beyond_floor(dense: ZooScores, defended: ZooScores,
                          subset: np.ndarray | None = None) -> dict[str, object]:
    """Does the defence move exposure more than retraining does?

    The mean absolute change of each example's exposure from the dense zoo's first half of targets
    to the *defended* zoo's second half, minus the same from the dense first half to the dense
    second half (the noise floor, :func:`exposure_change`), on the same examples.

    The interval comes from the pairs of targets, the independent units (examples share their
    models: resampling them would understate the spread): a delete-one-pair jackknife over the
    pairs of each half (a pair of the second half leaves the dense and the defended zoo
    together, their models being paired), ``change +- t * se`` with ``pairs - 2`` degrees of
    freedom. Not a bootstrap: resampling pairs with replacement repeats models, which inflates
    both mean absolute changes unequally and pushed the point estimate outside its own
    percentile interval on synthetic zoos (tests/test_reference_intervals.py). Read with
    :func:`reading` at the AUC margin (exposure is an AUC); fewer than :data:`MIN_PAIRS` pairs in
    all give no interval ("too few targets")."""
    from scipy.stats import t as student_t

    if dense.scores.shape != defended.scores.shape:
        raise UserError("exposure_beyond_floor needs two zoos of one pool with as many targets: "
                        "use the same --models for both")
    first, second = halves(len(dense.scores))
    keep = np.ones(dense.scores.shape[1], dtype=bool) if subset is None else np.asarray(subset, bool)
    n_units = len(dense.scores) // 2
    per_half = len(first) // 2
    # Row 0: every target; row 1 + k: pair k of that half left out.
    leave_out = np.vstack([np.ones((1, len(first))),
                           1.0 - np.repeat(np.eye(per_half), 2, axis=1)])
    before = _weighted_exposure(dense.scores[first][:, keep], dense.membership[first][:, keep],
                                leave_out)
    floor = _weighted_exposure(dense.scores[second][:, keep], dense.membership[second][:, keep],
                               leave_out)
    after = _weighted_exposure(defended.scores[second][:, keep],
                               defended.membership[second][:, keep], leave_out)

    def statistic(b: np.ndarray, f: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.abs(a - b).mean(-1) - np.abs(f - b).mean(-1)

    point = float(statistic(before[0], floor[0], after[0]))
    row: dict[str, object] = {"change": point, "low": None, "high": None,
                              "examples": int(keep.sum()), "pairs": n_units, "note": ""}
    if n_units < MIN_PAIRS:
        return row | {"reading": "too few targets", "note": too_few_targets(len(dense.scores))}
    jack_first = statistic(before[1:], floor[0], after[0])
    jack_second = statistic(before[0], floor[1:], after[1:])
    variance = sum((len(j) - 1) / len(j) * ((j - j.mean()) ** 2).sum()
                   for j in (jack_first, jack_second))
    half = float(student_t.ppf(0.975, n_units - 2) * math.sqrt(variance))
    low, high = point - half, point + half
    return row | {"low": low, "high": high, "reading": reading(low, high, MARGINS["auc"])}


def class_spread(zs: ZooScores, classes: np.ndarray, ordinary_only: bool = True) -> dict[str, np.ndarray]:
    """Per target: the attack's AUC within each class and the spread (largest minus smallest).

    ``classes`` holds the pool examples' true classes; canaries (their labels were changed on
    purpose) are left out when ``ordinary_only``. Returns ``{"per_class": (N, C) array (NaN where
    a class cannot be scored), "classes": the class ids, "spread": (N,)}``."""
    classes = np.asarray(classes).ravel()
    keep = ~zs.canary if ordinary_only else np.ones_like(zs.canary)
    ids = np.unique(classes[keep])
    per = np.full((len(zs.scores), len(ids)), np.nan)
    for i in range(len(zs.scores)):
        aucs = per_class_auc(zs.membership[i, keep].astype(int), zs.scores[i, keep], classes[keep])
        for j, c in enumerate(ids):
            per[i, j] = aucs.get(int(c), np.nan)
    spread = np.nanmax(per, axis=1) - np.nanmin(per, axis=1)
    return {"per_class": per, "classes": ids, "spread": spread}


def paired_target_change(before: Sequence[float], after: Sequence[float]) -> dict[str, object]:
    """Per-target values of two paired zoos, ``after - before``, averaged within each pair of
    targets (the independent units), with a Student-t interval read at the AUC margin
    (:func:`reading`); fewer than :data:`MIN_PAIRS` pairs give no interval."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    n = min(len(a), len(b))
    units = _unit_means(b[:n] - a[:n])
    mean, low, high = mean_interval(units)
    if len(units) < MIN_PAIRS:
        return {"change": mean, "low": None, "high": None, "reading": "too few targets",
                "note": too_few_targets(2 * len(units)), "units": int(len(units))}
    return {"change": mean, "low": low, "high": high, "reading": reading(low, high, MARGINS["auc"]),
            "note": "", "units": int(len(units))}


#: The rule that turns the readings of one comparison (every metric, both subsets, one attacker)
#: into one word; chapter 6 prints it before its verdicts.
VERDICT_RULE = ("'protects' if no metric reads higher and at least one reads lower; 'leaks more' if "
                "at least one reads higher and none lower; 'mixed' if some read higher and some "
                "lower; 'equivalent' if every metric that could be read is equivalent; "
                "'inconclusive' otherwise. Rates the data cannot resolve and intervals over too "
                "few targets are listed, never read.")


def verdict_word(readings: Iterable[str]) -> str:
    """One word for a comparison from the readings of all its metrics (:data:`VERDICT_RULE`)."""
    read = [r for r in readings if r in READINGS]
    higher, lower = "higher" in read, "lower" in read
    if higher and lower:
        return "mixed"
    if lower:
        return "protects"
    if higher:
        return "leaks more"
    if read and all(r == "equivalent" for r in read):
        return "equivalent"
    return "inconclusive"


def verdict_sentence(subject: str, rows: Iterable[Mapping[str, object]]) -> str:
    """``subject``'s verdict word and which metrics read what, from table rows with ``metric``,
    ``reading`` and (optionally) ``examples``; e.g. "ADMM 90% minus dense: mixed (higher: AUC on
    ordinary examples; lower: TPR @ 1% FPR on canaries; equivalent: ...)". Every word comes from
    the rows, so a sentence cannot disagree with its table."""
    rows = list(rows)
    word = verdict_word(str(r["reading"]) for r in rows)
    parts = []
    for kind in ("higher", "lower", "equivalent", "inconclusive"):
        items = [_metric_phrase(r) for r in rows if r["reading"] == kind]
        if items:
            parts.append(f"{kind}: {', '.join(items)}")
    unread = [_metric_phrase(r) for r in rows if r["reading"] not in READINGS]
    if unread:
        parts.append(f"not read: {', '.join(unread)}")
    return f"{subject}: {word}" + (f" ({'; '.join(parts)})" if parts else "")


def _metric_phrase(row: Mapping[str, object]) -> str:
    name = METRICS.get(str(row["metric"]), str(row["metric"]))
    return f"{name} on {row['examples']}" if row.get("examples") else name
