"""The names the command line accepts, importable without torch (a typo answered in a second).

Parsing ``python -m mcmia_helpers run --arch resnet99`` needs the lists of architectures,
datasets, defences, pruning methods, calibrations and attacks, but not the modules that define
what those names *do* (they import torch, torchvision, opacus, sklearn: seconds). This module
repeats the names as plain tuples; ``tests/test_choices.py`` checks that each equals its source
(``mcmia_helpers.data.DATASETS``, ``mcmia_helpers.models.ARCHITECTURES``, the defence
registry, ``mcmia_helpers.defences.pruning.PRUNING_CHOICES``,
:data:`mcmia_helpers.attacks.shadows.CALIBRATIONS`, ``mcmia_helpers.attacks.names.ATTACKS``),
so a name added there and not here fails the tests instead of being refused on the command line.

It imports nothing, so any layer may use it.
"""

from __future__ import annotations

#: Dataset names (``mcmia_helpers.data.DATASETS``).
DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "digits")
#: Architecture names (``mcmia_helpers.models.ARCHITECTURES``).
ARCHITECTURES: tuple[str, ...] = ("lenet5", "vgg16", "mobilenetv2", "resnet18")
#: Defence name -> its parameters (:data:`mcmia_helpers.defences.registry.DEFENSE_PARAMS`).
DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "prune": ("pruning", "sparsity", "sparsity_spec"),
    "minmax": ("lam", "k_steps"),
    "prune+minmax": ("pruning", "sparsity", "sparsity_spec", "lam", "k_steps"),
    "dp": ("epsilon", "delta", "max_grad_norm"),
}
#: The zoo's extra defence (:data:`mcmia_helpers.zoo.train.DENSE_LONG`): undefended, trained longer.
DENSE_LONG = "dense-long"
#: Pruning methods (the keys of ``mcmia_helpers.defences.pruning.PRUNING_CHOICES``).
PRUNING_METHODS: tuple[str, ...] = ("admm", "magnitude", "iterative", "admm-global",
                                    "magnitude-profile", "iterative-profile", "filter")
#: Shadow-model calibrations (:data:`mcmia_helpers.attacks.shadows.CALIBRATIONS`).
CALIBRATIONS: tuple[str, ...] = ("target", "undefended")
#: Attack names (``mcmia_helpers.attacks.names.ATTACKS``).
ATTACKS: tuple[str, ...] = ("shadow_top3", "shadow_label", "nasr_inference", "loss", "confidence",
                            "entropy", "modified_entropy", "correctness", "lira_online",
                            "lira_offline", "rmia_online", "rmia_offline", "lira_online_aware",
                            "lira_offline_aware", "rmia_online_aware", "rmia_offline_aware")
#: Attacks a zoo runs (:data:`mcmia_helpers.zoo.evaluate.ZOO_ATTACKS`), each also as ``<name>_aware``.
ZOO_ATTACKS: tuple[str, ...] = ("lira_online", "lira_offline", "rmia_online", "rmia_offline", "loss",
                                "confidence", "entropy", "modified_entropy", "correctness")
