"""Leave-one-out attacks on a zoo: every model a target, the other models its shadow models.

For target ``i`` of a zoo (Carlini et al. 2022, LiRA; the "reference models" of ML Privacy
Meter) the attacker's shadow models are the other models of a *shadow zoo*: the dense zoo (an
attacker who ignores the defence) or the zoo of the target's own defence (one who knows it,
``*_aware``). Model ``i`` of every zoo is left out of target ``i``'s shadows: the target
itself, and its dense parent, which trained on exactly the target's members. So is model ``i``'s
complementary partner (:func:`~mcmia_helpers.zoo.membership.partner`), which trained on exactly
the target's *non-members*: with it, the shadows' membership would not be independent of the
target's. Every example would be IN for one shadow model fewer when it is a member of the target
than when it is not, and the partner always sits in the group opposite to the target's label
with a statistic on the other side of the target's (one of the two trained on the example), so
the target's statistic looks more like its own group: keeping the partner *inflates* members'
scores. Measured on the ``ci`` dense zoo (8 LeNet-5 models) scored against random labels of the
same pair structure, five draws: LiRA online's pooled AUC was 0.524 to 0.551 with the partner
kept (every interval above 0.5) and 0.484 to 0.518 without it; on the true labels 0.665 against
0.649; LiRA offline moved by less than 0.003. Without the pair the ``N - 2`` shadow models are
whole pairs: every example is IN for exactly ``N / 2 - 1`` of them.
The evaluation records the shadow models it used for each target (``ZooScores.shadows``).

Attacks (:data:`ZOO_ATTACKS`): LiRA online and offline as its authors run it (per-example
medians online, means offline, chosen by measurement; below 64 shadow models the reference's
global variance, per-example variances from 64 on, as
:func:`~mcmia_helpers.attacks.lira.lira_scores` does), RMIA online and offline
(:mod:`~mcmia_helpers.attacks.rmia`: the shadow models are its reference models, the population
samples z are the *other* pool examples, as the paper does, each with its own IN/OUT models;
offline, ``a`` is tuned on the shadow models, see :func:`~mcmia_helpers.attacks.rmia.tune_offline_a`)
and the metric scores (loss, confidence, entropy, modified entropy, correctness). A zoo queries
one view of each image (its cached logits are of the image only). Each target's threshold for
the attack accuracy is calibrated on its shadow models only (LiRA and RMIA: leave-one-out among
the shadows, :func:`~mcmia_helpers.attacks.lira.lira_threshold`,
:func:`~mcmia_helpers.attacks.rmia.rmia_threshold`; metric scores: the best balanced accuracy
on the shadows' own members and non-members).

Metrics (:func:`zoo_metrics`), for all examples, the ordinary ones and the canaries apart:
per target (AUC, advantage, TPR at 1% / 0.1% / 0.01% FPR, calibrated and oracle accuracy),
their mean over targets with a Student-t interval, and the same metrics *pooled* over all
(target, example) pairs with a 95% interval from a bootstrap over targets (the scores of one
target share one model and are not independent, so targets, not (target, example) pairs, are
resampled). The two targets of a complementary pair are dependent too (complementary members,
the same shadow models), so the unit of both intervals is the pair of targets: the bootstrap
resamples pairs, and the Student-t interval is that of the pairs' means (its mean is the mean
over targets).
:func:`paired_difference` compares two zoos target by target on the same examples;
:func:`example_exposure` gives each example's exposure under a zoo (chapter 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from mcmia_helpers.attacks.lira import (DEFAULT_CENTRE, PER_EXAMPLE_VARIANCE_FROM, lira_scores,
                                        lira_threshold)
from mcmia_helpers.attacks.names import LIRA_ATTACKS, METRIC_ATTACKS, RMIA_ATTACKS
from mcmia_helpers.attacks.rmia import (RMIA_GAMMA, rmia_scores, rmia_signal, rmia_threshold,
                                        tune_offline_a)
from mcmia_helpers.attacks.scores import METRIC_SCORES, calibrate_threshold, logit_confidence
from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import FPR_OF, _curves, _trapezoid, mean_interval
from mcmia_helpers.zoo.membership import partner
from mcmia_helpers.zoo.train import Zoo

#: The attacks a zoo runs; each also exists as ``<name>_aware`` (shadows from the defended zoo).
ZOO_ATTACKS: tuple[str, ...] = LIRA_ATTACKS + RMIA_ATTACKS + METRIC_ATTACKS
AWARE_SUFFIX = "_aware"
#: The metrics of every target and of the pooled pairs.
SUMMARY_KEYS = ("auc", "advantage", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "tpr_at_0_01pct_fpr",
                "accuracy_calibrated", "accuracy_oracle")


def zoo_attack_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """Attack names (a comma-separated string or a list) checked against :data:`ZOO_ATTACKS`
    and their ``_aware`` forms; one-line UserError for an unknown or missing name."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = tuple(dict.fromkeys(n for n in names if n))
    known = ZOO_ATTACKS + tuple(a + AWARE_SUFFIX for a in ZOO_ATTACKS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown zoo attack(s) {', '.join(map(repr, unknown))}: choose from "
                        f"{', '.join(ZOO_ATTACKS)} (each also as <name>{AWARE_SUFFIX})")
    if not names:
        raise UserError("no attack named: use e.g. --attacks lira_online,loss")
    return names


def base_attack(name: str) -> tuple[str, bool]:
    """``(attack, aware)``: ``lira_online_aware`` -> ``("lira_online", True)``."""
    if name.endswith(AWARE_SUFFIX):
        return name[:-len(AWARE_SUFFIX)], True
    return name, False


@dataclass
class ZooScores:
    """One attack on every target of a zoo.

    ``scores`` ``(N, P)``: target ``i``'s score of pool example ``e`` (higher = member);
    ``thresholds`` ``(N,)``: each target's calibrated threshold (NaN: none, then the accuracy is
    the oracle's); ``membership`` ``(N, P)`` the truth; ``shadows[i]``: the ``(zoo, model)``
    pairs that served as target ``i``'s shadow models, as used to compute its scores.
    """

    attack: str
    target_zoo: str
    shadow_zoo: str
    scores: np.ndarray
    thresholds: np.ndarray
    membership: np.ndarray
    canary: np.ndarray
    shadows: list[list[tuple[str, int]]] = field(default_factory=list)
    note: str = ""


def _check_paired(target: Zoo, shadow: Zoo) -> None:
    n = min(target.n_models, shadow.n_models)
    if (target.logits.shape[1] != shadow.logits.shape[1]
            or not torch.equal(target.membership[:n], shadow.membership[:n])
            or not torch.equal(target.labels, shadow.labels)):
        raise UserError("the two zoos do not share one pool and membership matrix: build both "
                        "from the same --dataset, --pool, --canaries and --seed")
    if shadow.n_models < 4:
        raise UserError(f"the shadow zoo has {shadow.n_models} models: leave-one-out needs at least "
                        "4 (2 shadow models per target); use --models 4 or more")


def attack_zoo(attack: str, target: Zoo, shadow: Zoo,
               global_variance: bool | None = None) -> ZooScores:
    """Scores of ``attack`` (a name of :data:`ZOO_ATTACKS`) on every target of ``target``, with
    the other models of ``shadow`` as each target's shadow models (see the module docstring).
    ``global_variance`` (LiRA) defaults to fewer than 64 shadow models per target."""
    name, _ = base_attack(attack)
    if name not in ZOO_ATTACKS:
        zoo_attack_names([attack])
    _check_paired(target, shadow)
    labels = target.labels
    n_targets, n_shadow = target.n_models, shadow.n_models
    m_shadow = shadow.membership
    scores = np.empty((n_targets, target.logits.shape[1]))
    thresholds = np.full(n_targets, np.nan)
    shadows: list[list[tuple[str, int]]] = []
    gv = (n_shadow - 2) < PER_EXAMPLE_VARIANCE_FROM if global_variance is None else bool(global_variance)
    online = name.endswith("_online")
    a_notes: list[str] = []
    if name in LIRA_ATTACKS:
        t_stats = logit_confidence(target.logits, labels.expand(n_targets, -1))
        s_stats = logit_confidence(shadow.logits, labels.expand(n_shadow, -1))
    elif name in RMIA_ATTACKS:
        t_sig = rmia_signal(target.logits, labels.expand(n_targets, -1))
        s_sig = rmia_signal(shadow.logits, labels.expand(n_shadow, -1))
        self_z = np.arange(target.logits.shape[1])  # each pool example is a z too: not compared with itself
    else:
        fn = METRIC_SCORES[name]
        t_values = np.stack([fn(target.logits[i], labels) for i in range(n_targets)])
        s_values = np.stack([fn(shadow.logits[j], labels) for j in range(n_shadow)])
    for i in range(n_targets):
        left_out = (i, partner(i))  # model i of every zoo, and its complementary partner
        others = [j for j in range(n_shadow) if j not in left_out]
        shadows.append([(shadow.label, j) for j in others])
        if name in LIRA_ATTACKS:
            scores[i] = lira_scores(t_stats[i], s_stats[others], m_shadow[others], online, gv)
            t = lira_threshold(s_stats[others], m_shadow[others], online, gv)
        elif name in RMIA_ATTACKS:
            ref, ref_in = s_sig[others], m_shadow[others]
            a = None
            if not online:
                a, _ = tune_offline_a(ref, ref_in, ref, ref_in, gamma=RMIA_GAMMA, z_of_x=self_z)
                a_notes.append(f"{a:g}")
            options = {"online": online, "a": 0.0 if a is None else a, "gamma": RMIA_GAMMA,
                       "z_of_x": self_z}
            scores[i] = rmia_scores(t_sig[i], ref, ref_in, t_sig[i], ref, ref_in, **options)
            t = rmia_threshold(ref, ref_in, ref, ref_in, **options)
        else:
            scores[i] = t_values[i]
            t = calibrate_threshold(s_values[others].ravel(), m_shadow[others].numpy().ravel())
        thresholds[i] = np.nan if t is None else t
    if not np.isfinite(scores).all():
        raise UserError(f"{attack} could not score every example (a shadow zoo without both IN and "
                        "OUT models for an example): use more models")
    note = (f"{len(others)} shadow models per target from the {shadow.label} zoo (models i and "
            "its complementary partner left out)"
            + (f", {DEFAULT_CENTRE[online]} centres, {'global' if gv else 'per-example'} variance"
               + ("" if online else ", one-sided test") if name in LIRA_ATTACKS else ""))
    if name in RMIA_ATTACKS:
        note += (f"; RMIA gamma = {RMIA_GAMMA:g}, population: the other {scores.shape[1] - 1} pool "
                 "examples" + ("" if online else
                               f", offline a tuned on each target's shadow models (first shadow "
                               f"model as the stand-in target, a in 0, 0.1, ..., 1 by AUC): "
                               f"{', '.join(a_notes)} for targets 0..{n_targets - 1}"))
    return ZooScores(attack, target.label, shadow.label, scores, thresholds,
                     target.membership.numpy().astype(bool), target.canary.numpy().astype(bool),
                     shadows, note)


# --------------------------------------------------------------------------- metrics


def _summaries(scores: np.ndarray, labels: np.ndarray, predicted: np.ndarray | None,
               weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every :data:`SUMMARY_KEYS` metric for each row of ``weights`` ``(B, n)`` (how often each
    (target, example) pair counts), from one sort of the scores (:func:`metrics._curves`)."""
    tp, fp, _ = _curves(scores, labels, weights)
    n_pos = (weights * (labels == 1)).sum(1)
    n_neg = (weights * (labels == 0)).sum(1)
    tpr, fpr = tp / n_pos[:, None], fp / n_neg[:, None]
    out = {"auc": _trapezoid(tpr, fpr), "advantage": np.max(tpr - fpr, axis=1)}
    for key, rate in FPR_OF.items():
        out[key] = np.max(np.where(fpr <= rate + 1e-12, tpr, 0.0), axis=1)
    out["accuracy_oracle"] = 0.5 + out["advantage"] / 2
    if predicted is None:
        out["accuracy_calibrated"] = np.full(len(weights), np.nan)
    else:
        tpr_t = (weights * (predicted & (labels == 1))).sum(1) / n_pos
        tnr_t = (weights * (~predicted & (labels == 0))).sum(1) / n_neg
        out["accuracy_calibrated"] = (tpr_t + tnr_t) / 2
    return out


def _subset_columns(zs: ZooScores, subset: str) -> np.ndarray:
    if subset == "all":
        return np.ones(zs.scores.shape[1], dtype=bool)
    if subset == "ordinary":
        return ~zs.canary
    if subset == "canaries":
        return zs.canary.copy()
    raise UserError(f"unknown subset '{subset}': use all, ordinary or canaries")


def _pooled_arrays(zs: ZooScores, cols: np.ndarray):
    s = zs.scores[:, cols]
    m = zs.membership[:, cols].astype(np.int64)
    thr = zs.thresholds
    predicted = None if np.isnan(thr).any() else s >= thr[:, None]
    return s, m, predicted


def _bootstrap_weights(n_targets: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """``(B, N)`` counts of each target in each bootstrap resample.

    The resampled unit is the *pair* of targets ``(2k, 2k + 1)`` (each target alone when ``N`` is
    odd): the two models of a pair train on complementary halves of the pool and are scored with
    the same shadow models (both leave the pair out), so their scores are strongly dependent
    (negatively correlated across examples); resampling them apart would understate the spread.
    """
    rng = np.random.default_rng(seed)
    paired = n_targets % 2 == 0
    n_units = n_targets // 2 if paired else n_targets
    draws = rng.integers(0, n_units, size=(n_bootstrap, n_units))
    counts = np.stack([np.bincount(d, minlength=n_units) for d in draws]).astype(np.float64)
    return np.repeat(counts, 2, axis=1) if paired else counts


def _unit_means(values: np.ndarray) -> np.ndarray:
    """Per-target values averaged within each pair of targets (the independent units)."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(-1, 2).mean(1) if len(values) % 2 == 0 else values


def _pooled_boot(s: np.ndarray, m: np.ndarray, predicted: np.ndarray | None,
                 counts: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled metrics for each row of target ``counts`` ``(B, N)``, in chunks that bound memory."""
    n_targets, n_cols = s.shape
    flat_s, flat_m = s.ravel(), m.ravel()
    flat_p = None if predicted is None else predicted.ravel()
    chunk = max(1, int(4e6 // max(1, flat_s.size)))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(counts), chunk):
        w = np.repeat(counts[start:start + chunk], n_cols, axis=1)
        for key, value in _summaries(flat_s, flat_m, flat_p, w).items():
            parts.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _per_target(s: np.ndarray, m: np.ndarray, predicted: np.ndarray | None) -> dict[str, np.ndarray]:
    rows = [_summaries(s[i], m[i], None if predicted is None else predicted[i],
                       np.ones((1, s.shape[1]))) for i in range(len(s))]
    return {k: np.array([r[k][0] for r in rows]) for k in SUMMARY_KEYS}


def _can_score(m: np.ndarray) -> bool:
    return bool(m.any(axis=1).all() and (~m.astype(bool)).any(axis=1).all())


def zoo_metrics(zs: ZooScores, subset: str = "all", n_bootstrap: int = 200, seed: int = 0) -> dict:
    """Metrics of one attack on a zoo for ``subset`` (``all``, ``ordinary``, ``canaries``).

    Returns ``{"pooled": {key: value, "ci95": {key: [lo, hi]}}, "per_target": {key: [...]},
    "mean_over_targets": {key: {"mean", "low", "high"}}, "n_pooled_members",
    "n_pooled_nonmembers", "n_targets", "n_examples", "n_bootstrap", "threshold_kind"}``, or
    ``None`` when the subset is empty or some target has no member (or no non-member) in it.
    The pooled interval resamples pairs of targets (see the module docstring); the mean's is a
    Student-t interval over the pairs' means.
    """
    cols = _subset_columns(zs, subset)
    s, m, predicted = _pooled_arrays(zs, cols)
    if cols.sum() == 0 or not _can_score(m):
        return None
    n_targets = len(s)
    point = _pooled_boot(s, m, predicted, np.ones((1, n_targets)))
    pooled: dict = {k: _value(point[k][0]) for k in SUMMARY_KEYS}
    ci: dict = {}
    if n_bootstrap > 0:
        boot = _pooled_boot(s, m, predicted, _bootstrap_weights(n_targets, n_bootstrap, seed))
        for k in SUMMARY_KEYS:
            finite = boot[k][np.isfinite(boot[k])]
            ci[k] = [float(v) for v in np.percentile(finite, [2.5, 97.5])] if finite.size else None
    pooled["ci95"] = ci
    per = _per_target(s, m, predicted)
    means = {}
    for k in SUMMARY_KEYS:
        if np.isfinite(per[k]).any():
            mean, low, high = mean_interval(_unit_means(per[k]), bounds=(0.0, 1.0))
            means[k] = {"mean": mean, "low": low, "high": high}
        else:
            means[k] = None
    return {"pooled": pooled, "per_target": {k: [_value(v) for v in per[k]] for k in SUMMARY_KEYS},
            "mean_over_targets": means, "n_pooled_members": int(m.sum()),
            "n_pooled_nonmembers": int((1 - m).sum()), "n_targets": n_targets,
            "n_examples": int(cols.sum()), "n_bootstrap": int(n_bootstrap),
            "interval_unit": "pair of targets" if n_targets % 2 == 0 else "target",
            "threshold_kind": "oracle only" if predicted is None else "calibrated on shadow models"}


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def paired_difference(a: ZooScores, b: ZooScores, subset: str = "all", n_bootstrap: int = 200,
                      seed: int = 0) -> dict:
    """``a`` minus ``b``, target by target on the same examples (two zoos of one pool).

    The first ``min(N_a, N_b)`` targets are paired (model ``i`` of both zoos trained on the same
    members with the same seed). Returns per metric the pooled difference with a 95% interval
    from one bootstrap over targets applied to both zoos, and the mean per-target difference with
    a Student-t interval.
    """
    n = min(len(a.scores), len(b.scores))
    if (a.scores.shape[1] != b.scores.shape[1] or not np.array_equal(a.membership[:n], b.membership[:n])
            or not np.array_equal(a.canary, b.canary)):
        raise UserError("paired differences need two zoos of one pool and membership matrix")
    cols = _subset_columns(a, subset)
    arrays = []
    for zs in (a, b):
        s, m, p = _pooled_arrays(zs, cols)
        arrays.append((s[:n], m[:n], None if p is None else p[:n]))
    if cols.sum() == 0 or not _can_score(arrays[0][1]):
        return None
    counts = np.vstack([np.ones((1, n)), _bootstrap_weights(n, n_bootstrap, seed)])
    boots = [_pooled_boot(s, m, p, counts) for s, m, p in arrays]
    pers = [_per_target(s, m, p) for s, m, p in arrays]
    out: dict = {"a": a.target_zoo + f" ({a.attack})", "b": b.target_zoo + f" ({b.attack})",
                 "n_targets": n, "subset": subset, "n_bootstrap": int(n_bootstrap)}
    for k in SUMMARY_KEYS:
        diff = boots[0][k] - boots[1][k]
        per = pers[0][k] - pers[1][k]
        entry: dict = {"pooled": _value(diff[0]), "pooled_ci95": None, "mean_over_targets": None}
        rest = diff[1:][np.isfinite(diff[1:])]
        if rest.size:
            entry["pooled_ci95"] = [float(v) for v in np.percentile(rest, [2.5, 97.5])]
        if np.isfinite(per).any():
            mean, low, high = mean_interval(_unit_means(per))
            entry["mean_over_targets"] = {"mean": mean, "low": low, "high": high}
        out[k] = entry
    return out


def example_exposure(zs: ZooScores, fpr: float = 0.001) -> dict[str, np.ndarray]:
    """Each pool example's exposure under one attack on a zoo (chapter 6), as arrays ``(P,)``:

    ``auc``: the chance that the example's score when it is a member beats its score when it is
    not (over the targets, ties one half; 0.5 = not exposed); ``mean_in`` / ``mean_out``: its
    mean score over the targets that trained / did not train on it; ``flagged_in`` /
    ``flagged_out``: the share of those targets that flag it at the pooled threshold whose
    false-positive rate over all pairs is at most ``fpr``.
    """
    from scipy.stats import rankdata

    s, m = zs.scores, zs.membership.astype(bool)
    ranks = rankdata(s, axis=0)
    n_in, n_out = m.sum(0), (~m).sum(0)
    auc = ((ranks * m).sum(0) - n_in * (n_in + 1) / 2) / np.maximum(n_in * n_out, 1)
    negatives = np.sort(s[~m])[::-1]
    allowed = int(np.floor(negatives.size * (fpr + 1e-12)))
    flags = s > negatives[allowed] if allowed < negatives.size else np.ones_like(s, dtype=bool)
    return {"auc": auc, "mean_in": (s * m).sum(0) / np.maximum(n_in, 1),
            "mean_out": (s * ~m).sum(0) / np.maximum(n_out, 1),
            "flagged_in": (flags & m).sum(0) / np.maximum(n_in, 1),
            "flagged_out": (flags & ~m).sum(0) / np.maximum(n_out, 1)}
