"""The magnitude projection: keep the largest-magnitude weights, zero the rest.

The Z-step of ADMM, its hard prune, and the magnitude baselines all call it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


def n_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity prunes: ``round(s * n)``, at least one kept."""
    return min(numel - 1, int(round(sparsity * numel)))


def project(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask of the largest-magnitude entries to keep: the projection of the Z-step."""
    flat = weight.detach().reshape(-1)
    keep = flat.numel() - n_pruned(flat.numel(), sparsity)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat.abs(), keep, sorted=False).indices] = True
    return mask.view_as(weight)



def _torch_prune(layers: dict[str, nn.Module], targets: dict[str, float],
                 global_target: float | None) -> None:
    """Prune (further) to ``targets`` with ``torch.nn.utils.prune`` L1 magnitude.

    With ``global_target`` one threshold over all layers prunes ``round(s * N)`` weights in
    total; otherwise each layer reaches its own target. Amounts are absolute counts of weights
    still unpruned, so repeated calls (iterative pruning) land exactly on the target.
    """
    def pruned_now(module: nn.Module) -> int:
        mask = getattr(module, "weight_mask", None)
        return 0 if mask is None else int((mask == 0).sum())

    if global_target is not None:
        total = sum(m.weight.numel() for m in layers.values())
        amount = int(round(global_target * total)) - sum(pruned_now(m) for m in layers.values())
        prune.global_unstructured([(m, "weight") for m in layers.values()],
                                  pruning_method=prune.L1Unstructured, amount=max(0, amount))
        return
    for name, module in layers.items():
        amount = n_pruned(module.weight.numel(), targets[name]) - pruned_now(module)
        prune.l1_unstructured(module, "weight", amount=max(0, amount))
