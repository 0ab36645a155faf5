"""Membership inference attacks (chapter 1, threat models; later chapters reuse them).

Modules: :mod:`~mcmia_helpers.attacks.names` (what exists, threat models),
:mod:`~mcmia_helpers.attacks.scores` (metric signals and thresholds),
:mod:`~mcmia_helpers.attacks.classifiers` (shadow-model attack network, Nasr's inference model),
:mod:`~mcmia_helpers.attacks.lira` (LiRA), :mod:`~mcmia_helpers.attacks.rmia` (RMIA),
:mod:`~mcmia_helpers.attacks.queries` (which views of an image are queried),
:mod:`~mcmia_helpers.attacks.shadows` (the attacker's models) and
:mod:`~mcmia_helpers.attacks.runner` (scores and metrics on one target).
Their public names are available here, e.g. ``mh.attacks.run_attacks``.

Every attack returns one *score* per queried example, higher = more likely a member, and is
evaluated by :func:`mcmia_helpers.metrics.attack_metrics`. All attacks query the target as a
black box (its softmax output; the loss needs the true label too, which the attacker holds for
its own queries). What else each attacker knows is its threat model, stated in
:data:`~mcmia_helpers.attacks.names.THREAT_MODELS` and in each record; no attack sees the target's membership labels unless
its threat model says so (only ``nasr_inference``, which knows half of the members).

- ``shadow_top3``: Shokri et al. (2017) shadow models + Salem et al.'s (2019) ML-Leaks features: an attack network on the sorted top-3 posteriors.
- ``shadow_label``: the same shadow models; attack network on label-conditioned features (true-class log-probability, top-3, correctness, one-hot label).
- ``nasr_inference``: Nasr et al. (2018) inference model (posterior branch + label branch), trained on half of the members (known to the attacker) against reference non-members.
- ``loss``: Yeom et al. (2018): low loss = member.
- ``confidence``: largest softmax probability (label-free; the true-class probability would be a monotone function of the loss, the same attack).
- ``entropy``: low prediction entropy = member (label-free).
- ``modified_entropy``: Song and Mittal (2021): entropy that accounts for the true label.
- ``correctness``: correct prediction = member (the "gap attack").
- ``lira_online``: Carlini et al. (2022) likelihood-ratio attack with IN and OUT shadow models.
- ``lira_offline``: LiRA with OUT models only (one-sided test). Both run as the authors' code
  does (median centres online, means offline where they measured better, its global variance,
  mirrored queries when the recipe flips).
- ``rmia_online`` / ``rmia_offline``: Zarifzadeh, Liu and Shokri (2024): the target's likelihood
  ratio ``Pr(x|theta) / Pr(x)`` against that of population samples z (the shadow pool), with
  ``Pr(x)`` from LiRA's shadow models as reference models (offline: OUT models only, corrected
  with ``a``); ``gamma`` and ``a`` are in each record's ``settings``.
- ``lira_online_aware`` / ``lira_offline_aware`` / ``rmia_online_aware`` / ``rmia_offline_aware``:
  LiRA and RMIA whose shadow models are trained with the target's defence and its parameters
  (e.g. pruned to the same sparsity), the stronger attacker of Yuan and Zhang (2022). Not in the
  defaults: each shadow model is a full defended training.

Thresholds (for the attack *accuracy*; AUC and TPR at low FPR need none) are calibrated on
the attacker's own shadow models, never on the target's membership labels. The entry point is
:func:`~mcmia_helpers.attacks.runner.run_attacks`; :func:`~mcmia_helpers.attacks.runner.compute_attack_scores` returns the raw scores (for ROC curves and
histograms) without the metrics.
"""

from __future__ import annotations

from mcmia_helpers.attacks.classifiers import (inference_scores, label_features, top3_features,
                                               train_attack_classifier, train_inference_model)
from mcmia_helpers.attacks.lira import lira_in_out_sets, lira_scores, lira_threshold
from mcmia_helpers.attacks.names import (ATTACKS, DEFENCE_AWARE_ATTACKS, LIRA_ATTACKS,
                                         METRIC_ATTACKS, REFERENCE_ATTACKS, RMIA_ATTACKS,
                                         SHADOW_ATTACKS, THREAT_MODELS, default_attacks,
                                         validate_attack_names)
from mcmia_helpers.attacks.queries import query_views
from mcmia_helpers.attacks.rmia import (RMIA_GAMMA, rmia_scores, rmia_signal, rmia_threshold,
                                        tune_offline_a)
from mcmia_helpers.attacks.runner import (AttackScores, NasrSets, compute_attack_scores,
                                          nasr_sets, run_attacks)
from mcmia_helpers.attacks.scores import (METRIC_SCORES, calibrate_threshold, confidence_score,
                                          correctness_score, entropy_score, log_probs,
                                          logit_confidence, loss_score, modified_entropy_score,
                                          true_class_value)
from mcmia_helpers.attacks.shadows import (attacker_builder, attacker_cache_config, attacker_seed,
                                           defence_aware_models, lira_candidates, lira_model_specs,
                                           shadow_model_specs)
from mcmia_helpers.models import InferenceModel

__all__ = [
    "ATTACKS", "AttackScores", "DEFENCE_AWARE_ATTACKS", "InferenceModel", "LIRA_ATTACKS",
    "METRIC_ATTACKS", "METRIC_SCORES", "NasrSets", "REFERENCE_ATTACKS", "RMIA_ATTACKS",
    "RMIA_GAMMA", "SHADOW_ATTACKS", "THREAT_MODELS",
    "attacker_builder", "attacker_cache_config", "attacker_seed", "calibrate_threshold",
    "compute_attack_scores", "confidence_score", "correctness_score", "default_attacks",
    "defence_aware_models", "entropy_score", "inference_scores", "label_features",
    "lira_candidates", "lira_in_out_sets", "lira_model_specs", "lira_scores", "lira_threshold",
    "log_probs", "logit_confidence", "loss_score", "modified_entropy_score", "nasr_sets",
    "query_views", "rmia_scores", "rmia_signal", "rmia_threshold", "run_attacks",
    "shadow_model_specs", "tune_offline_a", "top3_features", "train_attack_classifier",
    "train_inference_model", "true_class_value", "validate_attack_names",
]
