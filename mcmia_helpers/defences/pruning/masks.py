"""Masks that stay fixed: applying them and keeping them through training (callbacks)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from mcmia_helpers.defences.compression import effective_weight, prunable_layers
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import TrainingCallback


def _layer(model: nn.Module, name: str) -> nn.Module:
    """The layer ``name`` of ``model``, also through an Opacus/DataParallel wrapper."""
    modules = dict(model.named_modules())
    for candidate in (name, f"_module.{name}", f"module.{name}"):
        if candidate in modules:
            return modules[candidate]
    raise UserError(f"layer '{name}' is not in this model: the masks were made for another "
                    "architecture")


def _weight_param(module: nn.Module) -> torch.Tensor:
    """The trainable tensor behind a layer's weight (``weight_orig`` under ``torch.nn.utils.prune``)."""
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def masks_from_model(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer_name: bool mask}`` of the nonzero weights of every prunable layer."""
    return {name: (effective_weight(module) != 0).cpu()
            for name, module in prunable_layers(model).items()}


@torch.no_grad()
def mask_tensors(tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero, in place, the entries of every ``tensors[k]`` that ``masks[k]`` (``True`` = keep)
    prunes: one model's weights, or ``M`` models stacked along a first dimension (the zoo's
    :class:`~mcmia_helpers.zoo.grouped.StackedMasks` calls it on the stacked parameters)."""
    for key, mask in masks.items():
        tensor = tensors[key]
        tensor.mul_(mask.to(device=tensor.device, dtype=tensor.dtype))


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the weights that ``masks`` (``True`` = keep) prune, in place; return ``model``."""
    mask_tensors({name: _weight_param(_layer(model, name)) for name in masks}, masks)
    return model


class MaskCallback(TrainingCallback):
    """Keeps pruned weights at zero through any training that runs through ``fit``.

    After every optimiser step the masked weights are set back to zero, so whatever the
    optimiser did to them (momentum, Adam's moments, weight decay, DP-SGD's noise) is undone
    before the next forward pass; at the end of every step, and so at the end of training, the
    model has exactly the mask's zeros. Apply the masks once before training
    (:func:`apply_masks`) so the very first batch also sees the pruned model.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        self.masks = {name: mask.bool() for name, mask in masks.items()}

    def after_step(self, model: nn.Module) -> None:
        apply_masks(model, self.masks)
        # keep the on-device copies so the next step does not copy them again
        for name in self.masks:
            weight = _weight_param(_layer(model, name))
            if self.masks[name].device != weight.device:
                self.masks[name] = self.masks[name].to(weight.device)


class CombinedCallback(TrainingCallback):
    """Several callbacks as one: extra losses add up, hooks run in the given order."""

    def __init__(self, callbacks: list[TrainingCallback]) -> None:
        self.callbacks = list(callbacks)

    def extra_loss(self, model, x, y, logits):
        terms = [t for cb in self.callbacks if (t := cb.extra_loss(model, x, y, logits)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_step(self, model: nn.Module) -> None:
        for cb in self.callbacks:
            cb.after_step(model)

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        row: dict[str, float] = {}
        for cb in self.callbacks:
            row.update(cb.epoch_end(epoch, model))
        return row

    def state_dict(self) -> dict:
        return {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state: dict) -> None:
        for i, cb in enumerate(self.callbacks):
            cb.load_state_dict(state.get(str(i), {}))


def compose_callbacks(*callbacks: TrainingCallback | None) -> CombinedCallback:
    """One callback running ``callbacks`` (``None`` skipped) in order.

    Put a :class:`MaskCallback` last, so that its ``after_step`` has the final word.
    """
    return CombinedCallback([cb for cb in callbacks if cb is not None])
