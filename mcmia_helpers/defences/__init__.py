"""Defences against membership inference, registered by name (chapters 2-4).

Modules: :mod:`~mcmia_helpers.defences.registry` (name -> trainer, parameters, validator; the
undefended baseline), :mod:`~mcmia_helpers.defences.compression` (what pruning buys: sparsity,
sizes, FLOPs, latency), :mod:`~mcmia_helpers.defences.pruning` (the paper's ADMM pruning and
magnitude baselines, chapter 2), :mod:`~mcmia_helpers.defences.minmax` (the Min-Max game and
pruning inside it, chapter 3) and :mod:`~mcmia_helpers.defences.dp` (DP-SGD, chapter 4).
A defence knows no attack; the attacks find a defence's trainer in
:data:`~mcmia_helpers.defences.registry.DEFENSES`.
"""

from __future__ import annotations

from mcmia_helpers.defences import compression, dp, minmax, pruning, registry
from mcmia_helpers.defences.registry import (DEFENSE_PARAMS, DEFENSES, PARAM_VALIDATORS,
                                             check_defense_name, register_defense,
                                             train_undefended, validate_defense_params)

PRUNE_PARAMS = ("pruning", "sparsity", "sparsity_spec")
MINMAX_PARAMS = ("lam", "k_steps")
DP_PARAMS = ("epsilon", "delta", "max_grad_norm")


def _validate_prune_minmax(params: dict) -> dict:
    """Both parts' checks; the parameters of ``prune+minmax`` with both parts' defaults."""
    return {**pruning.validate_pruning_params({k: v for k, v in params.items() if k in PRUNE_PARAMS}),
            **minmax.validate_minmax_params({k: v for k, v in params.items() if k in MINMAX_PARAMS})}


register_defense("prune", pruning.train_pruned, PRUNE_PARAMS, pruning.validate_pruning_params)
register_defense("minmax", minmax.train_minmax, MINMAX_PARAMS, minmax.validate_minmax_params)
register_defense("prune+minmax", minmax.train_prune_minmax, PRUNE_PARAMS + MINMAX_PARAMS,
                 _validate_prune_minmax)
register_defense("dp", dp.train_dp_target, DP_PARAMS, dp.validate_dp_params)

__all__ = ["DEFENSES", "DEFENSE_PARAMS", "DP_PARAMS", "MINMAX_PARAMS", "PARAM_VALIDATORS",
           "PRUNE_PARAMS", "check_defense_name", "compression", "dp", "minmax", "pruning",
           "register_defense", "registry", "train_undefended", "validate_defense_params"]
