"""Model zoos: many targets per experiment, leave-one-out LiRA, paired defences (issue 16).

A zoo trains ``N`` models of one recipe, each on a random half of one candidate pool; every
model is then a target in turn and the other ``N - 1`` are its shadow models (Carlini et al.
2022, "Membership Inference Attacks From First Principles"; the reference models of ML Privacy
Meter). ``N`` trainings buy ``N`` targets with ``P / 2`` members and ``P / 2`` non-members each.
A defence's zoo reuses the dense zoo's halves and seeds, so comparisons are paired target by
target and example by example. Canaries (deliberately mislabelled pool examples, Aerni, Zhang
and Tramèr, CCS 2024) are reported apart.

Modules, in layer order: :mod:`~mcmia_helpers.zoo.membership` (pool, canaries, the N x P
membership matrix) and :mod:`~mcmia_helpers.zoo.grouped` (ADMM and magnitude pruning, continued
training and epoch checkpoints of many models inside the grouped network),
:mod:`~mcmia_helpers.zoo.claims` (per-model file locks: processes sharing one cache never train a
model twice), :mod:`~mcmia_helpers.zoo.train` (per-model cache, resume, batched training, any
range of models on its own),
:mod:`~mcmia_helpers.zoo.evaluate` (leave-one-out attacks and metrics),
:mod:`~mcmia_helpers.zoo.epsilon` (the epsilon lower bound the canaries support, issue 25),
:mod:`~mcmia_helpers.zoo.runner` (one record; ``python -m mcmia_helpers zoo``, and its
``--train-only`` tasks for a cluster) and
:mod:`~mcmia_helpers.zoo.dp_match` (the DP-SGD setting of equal test accuracy, chapter 6).
"""

from __future__ import annotations

from mcmia_helpers.zoo.epsilon import canary_epsilon_bound, zoo_epsilon_bound
from mcmia_helpers.zoo.evaluate import (SUMMARY_KEYS, ZOO_ATTACKS, ZooScores, attack_zoo,
                                        example_exposure, paired_difference, zoo_attack_names,
                                        zoo_metrics)
from mcmia_helpers.zoo.membership import (ZooPool, draw_pool, membership_matrix, model_seed,
                                          random_membership)
from mcmia_helpers.zoo.runner import (check_zoo_request, run_zoo, save_zoo_scores,
                                      train_command, train_zoo_range)
from mcmia_helpers.zoo.train import (DENSE_LONG, Zoo, ZooModelsMissing, ZooSetup, ZooSpec,
                                     prepare_zoo, train_zoo, train_zoo_models, zoo_defences,
                                     zoo_models)

__all__ = ["DENSE_LONG", "SUMMARY_KEYS", "ZOO_ATTACKS", "Zoo", "ZooModelsMissing", "ZooPool",
           "ZooScores", "ZooSetup", "ZooSpec", "attack_zoo", "canary_epsilon_bound",
           "check_zoo_request", "draw_pool", "example_exposure", "membership_matrix", "model_seed",
           "paired_difference", "prepare_zoo", "random_membership", "run_zoo", "save_zoo_scores",
           "train_command", "train_zoo", "train_zoo_models", "train_zoo_range", "zoo_attack_names",
           "zoo_defences", "zoo_epsilon_bound", "zoo_metrics", "zoo_models"]
