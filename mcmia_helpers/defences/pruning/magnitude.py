"""The magnitude projection: keep the largest-magnitude weights, zero the rest.

Written once, over weights with a leading **model dimension** (``M`` models stacked, as the
zoo's grouped engine holds them; one model is a stack of one), and called by every path that
prunes by magnitude: ADMM's Z-step and hard prune (:mod:`.admm`), the one-shot and iterative
magnitude baselines of :func:`~mcmia_helpers.defences.pruning.prune_model`, and the zoo's
pruning of many models at once (:mod:`mcmia_helpers.zoo.grouped`).

* :func:`project_rows` / :func:`project`: per model, the mask of the ``numel - n_pruned``
  largest-magnitude entries of one layer (the Euclidean projection onto ``||W||_0 <= k``);
* :func:`magnitude_masks`: per model, one *global* threshold over several layers (the
  ``round(s * total)`` smallest weights go, as ``torch.nn.utils.prune.global_unstructured``
  with an absolute amount prunes them) or each layer's own (:func:`project_rows`).

Already-pruned weights are zero, the smallest magnitude there is, so pruning a masked model
further (iterative pruning) keeps them pruned: the masks of round ``r`` contain those of round
``r - 1`` whenever the surviving weights are nonzero and distinct.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["n_pruned", "project_rows", "project", "magnitude_masks"]


def n_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity prunes: ``round(s * n)``, at least one kept."""
    return min(numel - 1, int(round(sparsity * numel)))


def project_rows(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per model (first dimension), the boolean mask of the largest-magnitude entries to keep:
    ``numel - n_pruned(numel, sparsity)`` of each model's ``numel`` entries."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    keep = flat.shape[1] - n_pruned(flat.shape[1], sparsity)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, torch.topk(flat.abs(), keep, dim=1, sorted=False).indices, True)
    return mask.view_as(weight)


def project(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The mask of :func:`project_rows` for one model's ``weight`` (a stack of one)."""
    return project_rows(weight.unsqueeze(0), sparsity)[0]


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float],
                    keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Each model's magnitude masks of the stacked ``weights`` (``{key: [M, ...]}``).

    ``sparsity`` one number: one global threshold per model over all ``keys`` (default: every
    key), the ``round(s * total)`` smallest-magnitude weights of each model pruned; a mapping
    ``{key: s}``: each layer's own :func:`project_rows`.
    """
    keys = list(weights) if keys is None else list(keys)
    if isinstance(sparsity, Mapping):
        return {k: project_rows(weights[k], float(sparsity[k])) for k in keys}
    flat = torch.cat([weights[k].detach().reshape(weights[k].shape[0], -1) for k in keys], dim=1)
    drop = int(round(float(sparsity) * flat.shape[1]))
    mask = torch.ones_like(flat, dtype=torch.bool)
    if drop > 0:
        mask.scatter_(1, torch.topk(flat.abs(), drop, dim=1, largest=False).indices, False)
    out, start = {}, 0
    for k in keys:
        size = weights[k][0].numel()
        out[k] = mask[:, start:start + size].reshape(weights[k].shape)
        start += size
    return out
