"""How the attacks query a model: the image, and its mirror image when the recipe trains with
flips (chapter 1; issue 25).

LiRA's authors query every example as the model saw it in training: with random flips, the image
and its horizontal mirror (tensorflow/privacy ``research/mi_lira_2021/inference.py``,
``reflect=True``), each view scored on its own and the scores averaged. The training recipe's
augmentation flag is ``mcmia_helpers.training.TrainConfig.augment`` (the scale's
``augment``, or ``--augment``); :func:`query_views` reads it from the target's context.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn as nn

from mcmia_helpers.context import TargetContext
from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.shadow import predict_logits_many
from mcmia_helpers.training import predict_logits

#: The query views, the image as it is and mirrored left to right.
VIEWS = ("image", "mirror")


def trains_with_flips(ctx: TargetContext) -> bool:
    """Whether the target's recipe augments with random horizontal flips."""
    return bool(getattr(ctx.train_config, "augment", False))


def query_views(ctx: TargetContext) -> tuple[str, ...]:
    """``("image", "mirror")`` when the recipe trains with flips, else ``("image",)``."""
    return VIEWS if trains_with_flips(ctx) else VIEWS[:1]


def _view_bundle(bundle: DatasetBundle, indices: torch.Tensor, view: str) -> tuple[DatasetBundle, torch.Tensor]:
    """The data to query for ``view``: the bundle itself, or the ``indices``' images mirrored
    (a small bundle of just those images, so the whole dataset is never copied)."""
    if view == "image":
        return bundle, indices
    idx = torch.as_tensor(indices, dtype=torch.long)
    mirrored = replace(bundle, images=bundle.images[idx].flip(-1).contiguous(), labels=bundle.labels[idx])
    return mirrored, torch.arange(len(idx))


def view_logits(models: Sequence[nn.Module], ctx: TargetContext, indices: torch.Tensor,
                views: Sequence[str]) -> torch.Tensor:
    """Logits ``(M, E, V, C)`` of ``models`` on ``indices`` for each of ``views``."""
    out = []
    for view in views:
        bundle, idx = _view_bundle(ctx.bundle, indices, view)
        out.append(predict_logits_many(models, bundle, idx, device=ctx.device))
    return torch.stack(out, dim=2)


def target_view_logits(model: nn.Module, ctx: TargetContext, indices: torch.Tensor,
                       views: Sequence[str]) -> torch.Tensor:
    """Logits ``(E, V, C)`` of the one model under attack (queried alone, as every attack does)."""
    out = []
    for view in views:
        bundle, idx = _view_bundle(ctx.bundle, indices, view)
        out.append(predict_logits(model, bundle, idx, device=ctx.device))
    return torch.stack(out, dim=1)
