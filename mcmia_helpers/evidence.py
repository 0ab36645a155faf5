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
* :func:`compose_verdict`: one sentence per comparison from the directions, never typed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import mean_interval, per_class_auc
from mcmia_helpers.zoo.evaluate import (ZooScores, _unit_means, example_exposure, paired_difference,
                                        zoo_metrics)

#: The pooled metrics a chapter reports, low-FPR first, with their plain names.
METRICS: dict[str, str] = {
    "tpr_at_0_1pct_fpr": "TPR @ 0.1% FPR",
    "tpr_at_0_01pct_fpr": "TPR @ 0.01% FPR",
    "tpr_at_1pct_fpr": "TPR @ 1% FPR",
    "auc": "AUC",
    "accuracy_calibrated": "accuracy (calibrated)",
    "accuracy_oracle": "accuracy (oracle)",
}


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
    subset cannot be scored (for example a zoo without canaries)."""
    m = zoo_metrics(zs, subset, n_bootstrap=n_bootstrap, seed=seed)
    if m is None:
        return {}
    row: dict[str, float | None] = {"members": m["n_pooled_members"],
                                    "nonmembers": m["n_pooled_nonmembers"],
                                    "targets": m["n_targets"]}
    for key in METRICS:
        row[key] = m["pooled"][key]
        ci = m["pooled"]["ci95"].get(key)
        row[key + "_lo"], row[key + "_hi"] = (ci if ci else (None, None))
    return row


def paired_row(a: ZooScores, b: ZooScores, metric: str, subset: str = "all",
               n_bootstrap: int = 200, seed: int = 0) -> dict[str, object]:
    """``a`` minus ``b`` (two zoos of one pool and membership matrix, target by target) in the
    pooled ``metric``: ``{"change", "low", "high", "direction", "targets"}``; the interval is
    the zoo bootstrap over pairs of targets applied to both zoos at once
    (:func:`~mcmia_helpers.zoo.evaluate.paired_difference`)."""
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")
    diff = paired_difference(a, b, subset, n_bootstrap=n_bootstrap, seed=seed)
    if diff is None:
        return {"change": None, "low": None, "high": None, "direction": "no clear change",
                "targets": 0}
    entry = diff[metric]
    low, high = entry["pooled_ci95"] or (None, None)
    return {"change": entry["pooled"], "low": low, "high": high,
            "direction": direction(low, high), "targets": diff["n_targets"]}


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
        from scipy.stats import spearmanr

        keep = np.ones(len(self.before), dtype=bool) if subset is None else np.asarray(subset, bool)
        b, a = self.before[keep], self.after[keep]
        fb, fa = self.flagged_before[keep], self.flagged_after[keep]
        union = (fb | fa).sum()
        return {"examples": int(keep.sum()), "mean_abs_change": float(np.abs(a - b).mean()),
                "mean_change": float((a - b).mean()),
                "rank_correlation": float(spearmanr(b, a).statistic) if keep.sum() > 2 else math.nan,
                "flagged_before": int(fb.sum()), "flagged_after": int(fa.sum()),
                "newly_exposed": int((fa & ~fb).sum()), "no_longer_exposed": int((fb & ~fa).sum()),
                "jaccard": float((fb & fa).sum() / union) if union else math.nan}


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


def exposure_beyond_floor(change: ExposureChange, floor: ExposureChange, subset: np.ndarray | None = None,
                          n_bootstrap: int = 1000, seed: int = 0) -> dict[str, object]:
    """Does the defence move exposure more than retraining does? The mean absolute change under
    the defence minus that of the noise floor, on the same examples, with a bootstrap interval
    over examples and a :func:`direction` ("higher": the defence reshuffles exposure more)."""
    keep = np.ones(len(change.before), dtype=bool) if subset is None else np.asarray(subset, bool)
    d = np.abs(change.after - change.before)[keep] - np.abs(floor.after - floor.before)[keep]
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_bootstrap, len(d)))].mean(1)
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return {"change": float(d.mean()), "low": low, "high": high, "direction": direction(low, high),
            "examples": int(len(d))}


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
    targets (the independent units), with a Student-t interval and a :func:`direction`."""
    a = np.asarray(before, dtype=np.float64)
    b = np.asarray(after, dtype=np.float64)
    n = min(len(a), len(b))
    units = _unit_means(b[:n] - a[:n])
    mean, low, high = mean_interval(units)
    if len(units) < 2:
        low = high = math.nan
    return {"change": mean, "low": low, "high": high, "direction": direction(low, high),
            "units": int(len(units))}


_VERBS = {"lower": "lowers", "higher": "raises", "no clear change": "does not measurably change"}


def compose_verdict(findings: Mapping[str, Mapping[str, object]]) -> str:
    """One sentence per finding, from its computed direction: ``findings`` maps a subject (e.g.
    ``"ADMM 90% vs dense, TPR @ 0.1% FPR"``) to a dict with ``"direction"``, ``"subject"``
    (who acts: "ADMM pruning") and ``"what"`` (what it acts on: "the TPR at 0.1% FPR of
    defence-aware LiRA"). The words come from the direction, never from the prose."""
    sentences = []
    for finding in findings.values():
        verb = _VERBS.get(str(finding["direction"]))
        if verb is None:
            raise UserError(f"unknown direction {finding['direction']!r}")
        sentences.append(f"{finding['subject']} {verb} {finding['what']}.")
    return " ".join(sentences)
