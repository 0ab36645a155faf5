"""Pruning as a defence: the paper's ADMM pruning, magnitude baselines, and masks that stay fixed.

Introduced in the pruning chapter. MCMIA (Wang et al.) prunes the target by minimising the
classification loss subject to a cardinality constraint on each layer's weights
(``||W_l||_0 <= k_l``) and solves it with ADMM, following Zhang et al. (2018), "A Systematic DNN
Weight Pruning Framework using ADMM". With an auxiliary copy ``Z_l`` of each constrained weight
and a scaled dual variable ``U_l``:

* **W-step**: train on ``loss + rho/2 * sum_l ||W_l - Z_l + U_l||^2`` (:class:`ADMMCallback`
  adds the penalty through :func:`~mcmia_helpers.training.fit`);
* **Z-step**: ``Z_l = proj(W_l + U_l)``, the Euclidean projection onto the constraint set, which
  keeps the ``k_l`` largest-magnitude entries and zeroes the rest;
* **U-step**: ``U_l += W_l - Z_l``; then ``rho`` grows.
* After the ADMM phase the weights are close to sparse: they are **hard-pruned** (the same
  projection, applied to ``W``) and **retrained with the mask fixed** (:class:`MaskCallback`).

ADMM hyperparameters (:class:`ADMMSettings`) follow the framework's published PyTorch code where
the MCMIA paper is silent: ``rho`` starts at ``1e-3``, the Z- and U-steps run once per epoch
(their ``admm_epoch = 1``) and after each ``rho`` is multiplied by ``1.3`` (their
``admm_multi_rho_scheduler``), capped at ``1``. Their runs last tens of epochs; ours often
fewer than the 27 updates that ``x1.3`` needs to go from ``1e-3`` to ``1``, so then ``rho``
grows faster (``(1 / 1e-3) ** (1 / (updates - 1))``, e.g. ``x2.15`` over 10 epochs, close to the
``x2`` of other published variants) and the last epoch always trains at ``rho = 1``. When
``rho`` changes, ``U`` is rescaled by ``rho_old / rho_new`` so that the unscaled dual variable is
unchanged (Boyd et al. 2011, section 3.4.1); the framework's code omits this step.

Baselines (:func:`prune_model` ``method=``):

``magnitude``  one-shot magnitude pruning (:func:`~.magnitude.magnitude_masks`: a *global*
               threshold over all prunable weights when ``sparsity`` is one number, the
               masks ``torch.nn.utils.prune.global_unstructured`` gives; the layer's own
               threshold for a per-layer profile), fine-tuned with the mask fixed
               (:class:`MaskCallback`);
``iterative``  the same in several rounds (``iterative_rounds``, default 3), each pruning a
               fixed share of what remains (density ``(1 - s) ** (r / R)`` after round ``r``)
               and fine-tuning in between (Han et al. 2015).

Every method gets the same training budget after the dense model, ``admm_epochs +
retrain_epochs`` (by default half the target's epochs each), so the comparison is about the
method, not the number of epochs. Prunable weights are those of every ``Conv2d`` and
``Linear`` (not biases, not norm layers); see :func:`~mcmia_helpers.defences.compression.prunable_layers`.
One overall sparsity is spread over the layers by :func:`default_sparsity_profile` (small
layers pruned less); filter pruning (:mod:`.structured`) is the structured alternative that
removes whole filters and so really runs faster on a CPU.

Structured pruning as a defence (``pruning: filter``, LeNet-5, VGG16, MobileNetV2 and ResNet18,
through Torch-Pruning's dependency graph): every coupled group of channels of the dense target
loses the same share (smallest group L1 norms first), at the ratio whose narrow model keeps as
many prunable weights as unstructured pruning at the requested sparsity
(:func:`filter_budget`), and the narrow model is fine-tuned for the same budget as the other
methods (``admm_epochs + retrain_epochs``). Unstructured pruning buys a smaller file (zeros
compress) but no CPU speed-up; filter pruning buys both, because the result is an ordinary
dense model with fewer channels. Its shapes differ from the dense model's, so its cache entry
names them (``filter_channels`` in the entry's configuration) and :func:`with_channels`
rebuilds that form before the weights are loaded.

Each algorithm is written once, over weights with a leading model dimension (one model is a
stack of one), and the zoo's grouped pruning (:mod:`mcmia_helpers.zoo.grouped`) calls the same
code: the projection and magnitude masks in :mod:`.magnitude`, ADMM in :class:`~.admm.ADMMState`.

Files: :mod:`.profiles` (sparsity targets), :mod:`.magnitude` (the projection and magnitude
masks), :mod:`.masks` (fixed masks and callbacks), :mod:`.admm` (ADMM's state),
:mod:`.methods` (:func:`prune_model`), :mod:`.structured` (filter pruning) and :mod:`.entry`
(the ``prune`` defence: :func:`train_pruned`). This module re-exports their public names.
"""

from __future__ import annotations

from mcmia_helpers.defences.compression import prunable_layers, sparsity_per_layer
from mcmia_helpers.defences.pruning.admm import ADMMCallback, ADMMSettings, ADMMState
from mcmia_helpers.defences.pruning.entry import (FILTER_ARCHS, PARAM_DEFAULTS, PRUNING_CHOICES, PRUNING_VERSION,
                                                  check_pruning_arch, train_pruned,
                                                  validate_pruning_params)
from mcmia_helpers.defences.pruning.magnitude import magnitude_masks, n_pruned, project, project_rows
from mcmia_helpers.defences.pruning.masks import (CombinedCallback, MaskCallback, apply_masks,
                                                  compose_callbacks, mask_tensors, masks_from_model)
from mcmia_helpers.defences.pruning.methods import METHODS, prune_model
from mcmia_helpers.defences.pruning.profiles import (Sparsity, check_sparsity,
                                                     default_sparsity_profile,
                                                     global_threshold_targets, load_sparsity_spec,
                                                     resolve_sparsity)
from mcmia_helpers.defences.pruning.structured import (STRUCTURED, conv_channels, filter_budget,
                                                       filter_channels, prune_filters,
                                                       structured_report, vgg_with_channels,
                                                       with_channels)

#: The name of :func:`prune_filters` from when filter pruning was VGG16-only (callers still use it).
prune_filters_vgg = prune_filters

__all__ = ["METHODS", "ADMMSettings", "ADMMCallback", "MaskCallback", "CombinedCallback",
           "compose_callbacks", "apply_masks", "masks_from_model", "sparsity_per_layer",
           "default_sparsity_profile", "resolve_sparsity", "load_sparsity_spec",
           "check_sparsity", "project", "prune_model", "train_pruned", "validate_pruning_params",
           "prune_filters_vgg", "PARAM_DEFAULTS", "PRUNING_CHOICES", "global_threshold_targets",
           "STRUCTURED", "check_pruning_arch", "conv_channels", "filter_channels",
           "filter_budget", "vgg_with_channels", "prune_filters", "with_channels", "structured_report",
           "n_pruned", "prunable_layers", "PRUNING_VERSION", "Sparsity", "ADMMState",
           "project_rows", "magnitude_masks", "mask_tensors", "FILTER_ARCHS"]
