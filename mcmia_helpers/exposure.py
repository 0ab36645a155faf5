"""Per-example exposure: which members an attack singles out, and how a defence changes that.

Aggregate metrics can hide what matters to one person whose record is in the training set.
An attack run at a low false-positive rate (0.1%, Carlini et al. 2022) *flags* the few
members it is confident about; this module finds them (:func:`flagged`), compares the flagged
sets of two models on the same split (:func:`exposure_shift`: who became exposed, who stopped
being exposed), lines up every member's score under both (:func:`member_score_changes`),
measures how unevenly classes leak (:func:`class_auc_spread`, the class-wise divergence that
Yuan and Zhang (2022) found pruning to widen), pools scores over seeds for low-FPR metrics
(:func:`pool_scores`), and turns per-seed differences into an interval and a one-word
direction (:func:`paired_change`). Chapter 6 uses all of them.

Chapter 5 reads a grid's records seed by seed: :func:`seed_runs` (the deciding attack's
measures per run and attacker, the attack chosen once on the undefended model from
:func:`undefended_metrics`, each attacker's scores picked by :func:`attacker_attacks`),
:func:`seed_changes` (each defence minus its reference, paired by seed, with an interval over
seeds and one of four readings) and :func:`seed_summary`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mcmia_helpers.attacks.names import DEFENCE_AWARE_ATTACKS, REFERENCE_ATTACKS, aware_form
from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import mean_interval, per_class_auc

if TYPE_CHECKING:
    import pandas as pd

    from mcmia_helpers.attacks import AttackScores


def _finite(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise UserError(f"{labels.size} labels but {scores.size} scores: pass one score per example")
    ok = np.isfinite(scores)
    if not (labels[ok] == 1).any() or not (labels[ok] == 0).any():
        raise UserError("exposure needs scored members and non-members: check the attack evaluated both")
    return labels, scores, ok


def flagged(labels, scores, fpr: float) -> np.ndarray:
    """Boolean per example: flagged as a member at the lowest threshold whose false-positive rate
    on these non-members is at most ``fpr``.

    The threshold follows :func:`mcmia_helpers.metrics.tpr_at_fpr`, so the share of members
    flagged equals the reported TPR at that FPR. With ``n`` non-members at most
    ``floor(fpr * n)`` of them are flagged; examples without a score (NaN) are never flagged.
    """
    if not 0 <= fpr < 1:
        raise UserError(f"fpr must lie in [0, 1) (got {fpr}): e.g. 0.001 for 0.1%")
    labels, scores, ok = _finite(labels, scores)
    negatives = np.sort(scores[ok & (labels == 0)])[::-1]
    allowed = int(np.floor(negatives.size * (fpr + 1e-12)))
    out = np.zeros(scores.shape, dtype=bool)
    if allowed >= negatives.size:
        out[ok] = True
        return out
    # Flag everything scoring above the (allowed + 1)-th highest non-member: ties stay unflagged.
    out[ok] = scores[ok] > negatives[allowed]
    return out


@dataclass
class ExposureShift:
    """How the set of flagged members changed from one model (before) to another (after)."""

    fpr: float
    members: int
    flagged_before: int
    flagged_after: int
    flagged_both: int
    newly_exposed: int
    no_longer_exposed: int
    jaccard: float
    rank_correlation: float

    def to_dict(self) -> dict:
        return asdict(self)


def _check_same_examples(before: "AttackScores", after: "AttackScores") -> None:
    if not (np.array_equal(before.indices, after.indices) and np.array_equal(before.labels, after.labels)):
        raise UserError("the two score sets cover different examples: compare models attacked on one split")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def exposure_shift(before: "AttackScores", after: "AttackScores", attack: str, fpr: float = 0.001,
                   attack_after: str | None = None) -> ExposureShift:
    """Compare the members flagged by ``attack`` at ``fpr`` on two models of the same split.

    ``attack_after`` (default ``attack``) scores the second model, e.g. a defence-aware attack
    against the defended model. ``jaccard`` is the number flagged by both over the number flagged by
    either (1.0 when neither flags anyone); ``rank_correlation`` is Spearman's rho between the members' two scores.
    """
    _check_same_examples(before, after)
    s_before = before.scores[attack]
    s_after = after.scores[attack_after or attack]
    members = before.labels == 1
    f_before = flagged(before.labels, s_before, fpr) & members
    f_after = flagged(after.labels, s_after, fpr) & members
    either = int((f_before | f_after).sum())
    both = int((f_before & f_after).sum())
    return ExposureShift(fpr=float(fpr), members=int(members.sum()),
                         flagged_before=int(f_before.sum()), flagged_after=int(f_after.sum()),
                         flagged_both=both, newly_exposed=int((f_after & ~f_before).sum()),
                         no_longer_exposed=int((f_before & ~f_after).sum()),
                         jaccard=1.0 if either == 0 else both / either,
                         rank_correlation=_spearman(s_before[members], s_after[members]))


def nonmember_percentile(labels, scores) -> np.ndarray:
    """Each example's score as the share of non-members scoring strictly below it (0 to 1).

    Scores of different models are on different scales; this puts them on one: 0.999 means
    the example outscores 99.9% of the non-members, i.e. it is flagged at an FPR of about 0.1%.
    """
    labels, scores, ok = _finite(labels, scores)
    negatives = np.sort(scores[ok & (labels == 0)])
    out = np.full(scores.shape, np.nan)
    out[ok] = np.searchsorted(negatives, scores[ok], side="left") / negatives.size
    return out


def member_score_changes(before: "AttackScores", after: "AttackScores", attack: str,
                         attack_after: str | None = None) -> "pd.DataFrame":
    """One row per member: dataset index, class, its score and non-member percentile under both
    models, and the change of percentile (positive = more exposed after)."""
    import pandas as pd

    _check_same_examples(before, after)
    s_before = before.scores[attack]
    s_after = after.scores[attack_after or attack]
    p_before = nonmember_percentile(before.labels, s_before)
    p_after = nonmember_percentile(after.labels, s_after)
    members = before.labels == 1
    frame = pd.DataFrame({"index": before.indices[members], "class": before.classes[members],
                          "score_before": s_before[members], "score_after": s_after[members],
                          "percentile_before": p_before[members], "percentile_after": p_after[members]})
    frame["change"] = frame["percentile_after"] - frame["percentile_before"]
    return frame


def class_auc_spread(scores: "AttackScores", attack: str) -> dict:
    """The attack's AUC within each class and how unequal they are: ``{"per_class": {c: auc},
    "spread": max - min, "std": standard deviation over classes}``."""
    s = scores.scores[attack]
    ok = np.isfinite(s)
    per = per_class_auc(scores.labels[ok], s[ok], scores.classes[ok])
    values = np.array(list(per.values()))
    if values.size == 0:
        raise UserError(f"no class has both members and non-members scored by '{attack}'")
    return {"per_class": per, "spread": float(values.max() - values.min()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0}


def pool_scores(score_sets: Sequence["AttackScores"], attack: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of ``attack`` over several targets (seeds), concatenated.

    Low-FPR metrics need many non-members (at 0.1% FPR, 1,000 non-members allow one false
    positive). Pooling is meaningful when scores share one scale across targets, as LiRA's
    likelihood ratios and the loss do; the pooled metrics are those of an attacker who uses
    one threshold for every target.
    """
    if not score_sets:
        raise UserError("pool_scores got no score set: pass one AttackScores per seed")
    labels = np.concatenate([s.labels for s in score_sets])
    scores = np.concatenate([s.scores[attack] for s in score_sets])
    ok = np.isfinite(scores)
    return labels[ok], scores[ok]


def paired_change(before: Sequence[float], after: Sequence[float], confidence: float = 0.95,
                  tolerance: float = 0.0) -> dict:
    """Per-seed differences ``after - before`` as a mean with a Student-t interval and a direction.

    ``direction`` is "lower" or "higher" when the whole interval lies below ``-tolerance`` or
    above ``tolerance``, else "no clear change": the verdicts of chapter 6 come from here, not
    from reading a table by eye. Seeds must be paired (same split and attacker in both lists).
    """
    a = np.asarray(before, dtype=np.float64).ravel()
    b = np.asarray(after, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise UserError(f"paired_change needs one value per seed in both lists (got {a.size} and {b.size})")
    diff = b - a
    mean, lo, hi = mean_interval(diff, confidence)
    if diff.size < 2:
        direction = "no clear change"  # one seed gives no interval to decide with
    elif hi < -tolerance:
        direction = "lower"
    elif lo > tolerance:
        direction = "higher"
    else:
        direction = "no clear change"
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(diff.size), "direction": direction,
            "per_seed": [float(d) for d in diff]}


# --- Chapter 5: a grid's runs, seed by seed -------------------------------------------------

#: The per-run measures chapter 5 compares between defences, in table order (keys of
#: :data:`mcmia_helpers.evidence.METRICS`). TPR at 0.1% FPR is left out: a run of the book grid
#: has at most 1,000 non-members, and 0.1% of them is one false positive.
SEED_METRICS: tuple[str, ...] = ("auc", "tpr_at_1pct_fpr", "accuracy_calibrated", "accuracy_oracle")

#: The fewest seeds an interval over seeds rests on. With two seeds, Student's t has one degree
#: of freedom and is 12.7 standard errors wide on each side, an interval that says nothing.
MIN_SEEDS = 3


def run_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """One attack's measures on one run (an entry of a grid record's ``attacks``), as fractions.

    ``accuracy_calibrated`` is the accuracy at the threshold the attacker calibrated on shadow
    models (NaN where the attack has no calibrated threshold); ``accuracy_oracle`` the best
    accuracy any threshold reaches on these labels (``0.5 + advantage / 2`` where a record
    predates the field)."""
    calibrated = result.get("threshold_kind") == "calibrated"
    oracle = result.get("accuracy_oracle")
    return {"auc": float(result["auc"]),
            "tpr_at_1pct_fpr": float(result["tpr_at_1pct_fpr"]),
            "tpr_at_0_1pct_fpr": float(result["tpr_at_0_1pct_fpr"]),
            "accuracy_calibrated": float(result["accuracy"]) if calibrated else math.nan,
            "accuracy_oracle": float(0.5 + result["advantage"] / 2 if oracle is None else oracle)}


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan


def undefended_metrics(records: Sequence[Mapping[str, Any]], arch: str
                       ) -> tuple[dict[str, dict[str, float]], int]:
    """Every attack's measures on the *undefended* runs of ``arch`` (mean over seeds), and the
    non-members of one run (the smallest count): what
    :func:`mcmia_helpers.evidence.choose_decider` needs to choose the deciding attack once,
    before any defence is looked at. The defence-aware forms (``*_aware``) are left out: on an
    undefended model they are the plain attacks."""
    runs = [r for r in records if r["arch"] == arch and r["defense"] == "none"]
    if not runs:
        raise UserError(f"no undefended run of {arch}: the grid needs {{defense: none}} for it")
    # Against an undefended model a defence-aware attack is its plain form (the same reference
    # models): it is not a candidate of its own.
    attacks = sorted(set.intersection(*(set(r["attacks"]) for r in runs)) - set(DEFENCE_AWARE_ATTACKS))
    rows = {}
    for attack in attacks:
        per_seed = [run_metrics(r["attacks"][attack]) for r in runs]
        rows[attack] = {k: _nanmean([m[k] for m in per_seed]) for k in per_seed[0]}
    nonmembers = min(int(r["attacks"][a]["n_nonmembers"]) for r in runs for a in attacks)
    return rows, nonmembers


#: The two attackers of chapter 5, in the order its tables show them. The unaware attacker
#: (the paper's threat model) calibrates on models trained without the defence, the
#: defence-aware attacker on models trained through the target's defence.
ATTACKERS: tuple[str, ...] = ("unaware", "aware")


def attacker_attacks(record: Mapping[str, Any], attack: str) -> dict[str, str]:
    """Which scores of one grid record each attacker gets for the deciding ``attack``.

    A reference-model attack (LiRA, RMIA) holds both attackers in one record: its plain form
    uses reference models trained without the defence (unaware), its ``*_aware`` form models
    trained through the target's defence (aware). A metric or shadow-model attack has one
    calibration per record (its ``calibration`` field; a defended record without the field
    predates target-matched calibration, so it is unaware). Against an undefended model the
    two attackers are one. Only the scores the record holds are returned."""
    if attack in REFERENCE_ATTACKS:
        forms = {"unaware": attack, "aware": aware_form(attack)}
    elif record["defense"] == "none":
        forms = {"unaware": attack, "aware": attack}
    else:
        calibrated_on = record.get("calibration") or "undefended"
        forms = {"aware" if calibrated_on == "target" else "unaware": attack}
    return {who: name for who, name in forms.items() if name in record["attacks"]}


def seed_runs(records: Sequence[Mapping[str, Any]], deciders: Mapping[str, str]) -> "pd.DataFrame":
    """One row per run of a grid and attacker (:data:`ATTACKERS`, see :func:`attacker_attacks`):
    architecture, defence, seed, attacker, the deciding attack of its architecture
    (``deciders``: architecture -> attack, chosen on the undefended model) in that attacker's
    form and its :data:`SEED_METRICS`, the test accuracy, compression ratio, privacy budget,
    how the attacker calibrated and the run's non-member count."""
    import pandas as pd

    rows = []
    for r in records:
        forms = attacker_attacks(r, deciders[r["arch"]])
        if not forms:
            raise UserError(f"{r['cell_id']} has no '{deciders[r['arch']]}' scores: rerun the grid "
                            "with it")
        for attacker, attack in forms.items():
            result = r["attacks"][attack]
            rows.append({"arch": r["arch"], "defense": r["defense"], "seed": int(r["seed"]),
                         "attacker": attacker, "attack": attack, "test_acc": float(r["test_acc"]),
                         "compression": float(r.get("compression_ratio") or 1.0),
                         "epsilon": float(r.get("epsilon") or math.inf),
                         "calibration": r.get("calibration"),
                         "nonmembers": int(result["n_nonmembers"]), **run_metrics(result)})
    frame = pd.DataFrame(rows)
    if frame.duplicated(["arch", "defense", "seed", "attacker"]).any():
        raise UserError("two records of one architecture, defence, seed and attacker: keep one "
                        "per seed")
    return frame


def seed_interval(values: Sequence[float], min_seeds: int = MIN_SEEDS,
                  bounds: tuple[float, float] | None = None) -> dict[str, float | int | None]:
    """Mean of per-seed ``values`` with a 95% Student-t interval over seeds, or no interval
    (``low``/``high`` None) with fewer than ``min_seeds`` seeds; ``bounds`` clips the interval
    to a measure's range (``(0, 1)`` for a rate; a change can be negative and is not clipped)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "low": None, "high": None, "seeds": 0}
    if v.size < min_seeds:
        return {"mean": float(v.mean()), "low": None, "high": None, "seeds": int(v.size)}
    mean, low, high = mean_interval(v, bounds=bounds)
    return {"mean": float(mean), "low": float(low), "high": float(high), "seeds": int(v.size)}


def seed_changes(runs: "pd.DataFrame", comparisons: Sequence[tuple[str, str]], *,
                 margins: Mapping[str, float], read: Callable[[float | None, float | None, float], str],
                 resolves: Callable[[str, int], bool],
                 metrics: Sequence[str] = SEED_METRICS) -> "pd.DataFrame":
    """Chapter 5's like-for-like comparison: for every architecture, attacker and ``(defence,
    reference)`` pair of ``comparisons`` that its runs hold, ``defence - reference`` seed by seed
    (same seed, same members) in each of ``metrics``, with its interval over seeds
    (:func:`seed_interval`) and a reading ``read(low, high, margins[metric])`` (pass
    :func:`mcmia_helpers.evidence.reading` and :data:`~mcmia_helpers.evidence.MARGINS`).

    A metric that ``resolves(metric, non-members of one run)`` rejects (a TPR at 1% FPR from
    500 non-members: five false positives) gets no number (NaN) and the reading
    ``"not resolved"``; with fewer than :data:`MIN_SEEDS` seeds ``low`` and ``high`` are NaN.
    The test-accuracy change (the cost) and the defended runs' mean compression come beside
    every row. Returns one row per architecture, comparison and metric: ``arch, defense,
    reference, attacker, attack, metric, change, low, high, seeds, nonmembers, resolved, reading,
    test_change, test_low, test_high, compression, calibration``."""
    import pandas as pd

    rows = []
    for arch, attacker in dict.fromkeys(zip(runs["arch"], runs["attacker"])):
        part = runs[(runs["arch"] == arch) & (runs["attacker"] == attacker)]
        for defense, reference in comparisons:
            after, before = part[part["defense"] == defense], part[part["defense"] == reference]
            pair = after.merge(before, on="seed", suffixes=("", "_ref"))
            if pair.empty:
                continue
            test = seed_interval(pair["test_acc"] - pair["test_acc_ref"])
            nonmembers = int(min(pair["nonmembers"].min(), pair["nonmembers_ref"].min()))
            common = {"arch": arch, "defense": defense, "reference": reference,
                      "attacker": attacker, "attack": pair["attack"].iloc[0], "seeds": int(len(pair)),
                      "nonmembers": nonmembers, "test_change": _nan(test["mean"]),
                      "test_low": _nan(test["low"]), "test_high": _nan(test["high"]),
                      "compression": float(pair["compression"].mean()),
                      "calibration": "; ".join(sorted({str(c) for c in pair["calibration"]}))}
            for metric in metrics:
                resolved = bool(resolves(metric, nonmembers))
                change = seed_interval(pair[metric] - pair[metric + "_ref"]) if resolved else \
                    {"mean": None, "low": None, "high": None}
                reading = read(change["low"], change["high"], margins[metric]) if resolved \
                    else "not resolved"
                rows.append(common | {"metric": metric, "change": _nan(change["mean"]),
                                      "low": _nan(change["low"]), "high": _nan(change["high"]),
                                      "resolved": resolved, "reading": reading})
    return pd.DataFrame(rows)


def _nan(value: float | None) -> float:
    """A missing number as NaN (what a table column holds), never None."""
    return math.nan if value is None else float(value)


def seed_summary(runs: "pd.DataFrame", resolves: Callable[[str, int], bool],
                 metrics: Sequence[str] = SEED_METRICS) -> "pd.DataFrame":
    """One row per architecture, defence and attacker: the mean over seeds of test accuracy and of the
    deciding attack's ``metrics`` with intervals over seeds (:func:`seed_interval`; a metric
    that ``resolves`` rejects for one run's non-members is NaN), plus seeds, compression and
    privacy budget. Columns ``<name>``, ``<name>_low``, ``<name>_high`` per measure."""
    import pandas as pd

    rows = []
    for (arch, defense, attacker), part in runs.groupby(["arch", "defense", "attacker"],
                                                        sort=False):
        row: dict[str, Any] = {"arch": arch, "defense": defense, "attacker": attacker,
                               "attack": part["attack"].iloc[0],
                               "seeds": int(len(part)), "nonmembers": int(part["nonmembers"].min()),
                               "compression": float(part["compression"].mean()),
                               "epsilon": float(part["epsilon"].mean())}
        for name in ("test_acc", *metrics):
            ok = name == "test_acc" or resolves(name, row["nonmembers"])
            s = seed_interval(part[name], bounds=(0.0, 1.0)) if ok else {"mean": math.nan, "low": None, "high": None}
            row |= {name: s["mean"], f"{name}_low": _nan(s["low"]), f"{name}_high": _nan(s["high"])}
        rows.append(row)
    return pd.DataFrame(rows)
