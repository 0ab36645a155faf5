"""``prune_model``: ADMM, magnitude and iterative pruning of one trained model, retrained."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.defences.compression import prunable_layers, sparsity_per_layer
from mcmia_helpers.defences.pruning.admm import ADMMCallback, ADMMSettings
from mcmia_helpers.defences.pruning.magnitude import magnitude_masks
from mcmia_helpers.defences.pruning.masks import MaskCallback, apply_masks, compose_callbacks
from mcmia_helpers.defences.pruning.profiles import Sparsity, resolve_sparsity
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import TrainConfig, TrainingCallback, evaluate, fit, get_device

METHODS: tuple[str, ...] = ("admm", "magnitude", "iterative")


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"pruning method '{method}' is unknown: choose {', '.join(METHODS)}")
    return method


def _check_epochs(value: int | None, default: int, what: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{what} {value!r} is not a non-negative integer: use e.g. {default}")
    return value


def _phase_path(checkpoint_path: str | os.PathLike | None, phase: str) -> Path | None:
    return None if checkpoint_path is None else Path(checkpoint_path).with_suffix(f".{phase}.pt")


def _tag(history: list[dict], **fields: Any) -> list[dict]:
    return [{**row, **fields} for row in history]


def _before_retrain(history: list[dict]) -> float | None:
    """Accuracy right after the first hard prune, from its ``hard_prune`` history row."""
    rows = [row for row in history if row.get("phase") == "hard_prune"]
    return float(rows[0]["acc"]) if rows else None



def prune_model(model: nn.Module, bundle: DatasetBundle, indices: torch.Tensor,
                config: TrainConfig, method: str, sparsity: Sparsity, *,
                admm_epochs: int | None = None, retrain_epochs: int | None = None,
                callback_extra: TrainingCallback | None = None,
                device: torch.device | None = None, progress: bool = False,
                admm: ADMMSettings | None = None, iterative_rounds: int = 3,
                checkpoint_path: str | os.PathLike | None = None,
                ) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Prune a trained dense ``model`` in place with ``method`` and retrain it on ``indices``.

    ``sparsity`` is one number, a ``{layer: s}`` mapping or a spec file (see
    ``resolve_sparsity``); for ``magnitude``/``iterative`` one number means one global
    threshold. ``config`` is the target's training configuration; each phase trains with it,
    its ``epochs`` replaced by ``admm_epochs`` (W-steps of ADMM) and ``retrain_epochs``
    (masked retraining), both by default ``max(1, config.epochs // 2)``; the magnitude
    baselines fine-tune for the sum. ``callback_extra`` (e.g. the Min-Max game's gain) joins
    every phase. ``checkpoint_path`` makes each phase resumable (files next to it, deleted
    at the end).

    Returns ``(model, masks, info)``: the pruned model (weights are plain tensors, the zeros
    are real), its ``{layer: keep mask}``, and ``info`` with ``method``, ``targets``,
    ``history``, the epochs used, ``train_acc_before_retrain`` (accuracy on ``indices`` right
    after the (first) hard prune) and the achieved ``sparsity_per_layer``. ``history`` holds
    the per-epoch rows of every phase with a ``phase`` key (``admm``, ``retrain``,
    ``finetune`` with its ``round``) and, after each hard prune, one ``hard_prune`` row: loss
    and accuracy on ``indices`` of the freshly pruned model, before any retraining.
    """
    method = _check_method(method)
    default_epochs = max(1, config.epochs // 2)
    admm_epochs = _check_epochs(admm_epochs, default_epochs, "admm_epochs")
    retrain_epochs = _check_epochs(retrain_epochs, default_epochs, "retrain_epochs")
    if method != "admm" and admm_epochs + retrain_epochs == 0:
        raise UserError("magnitude pruning needs at least one fine-tuning epoch: set "
                        "admm_epochs + retrain_epochs >= 1")
    if not isinstance(iterative_rounds, int) or iterative_rounds < 1:
        raise UserError(f"iterative_rounds {iterative_rounds!r} is not a positive integer: use e.g. 3")
    device = device or get_device()
    model.to(device)
    indices = torch.as_tensor(indices, dtype=torch.long)
    targets = resolve_sparsity(model, sparsity)
    layers = prunable_layers(model)
    is_number = isinstance(sparsity, numbers.Real) and not isinstance(sparsity, bool)
    global_target = float(sparsity) if is_number and method != "admm" else None
    history: list[dict] = []
    paths: list[Path | None] = []
    info: dict[str, Any] = {"method": method, "admm_epochs": admm_epochs if method == "admm" else 0,
                            "retrain_epochs": retrain_epochs if method == "admm" else admm_epochs + retrain_epochs,
                            "targets": {"global": global_target} if global_target is not None else targets}

    if method == "admm":
        settings = admm or ADMMSettings()
        steps_per_epoch = math.ceil(len(indices) / config.batch_size)
        per_epoch = max(1, min(int(settings.updates_per_epoch), steps_per_epoch))
        growth = settings.growth_for(per_epoch * admm_epochs)
        admm_cb = ADMMCallback(model, targets, settings.rho_init, growth, settings.rho_max,
                               update_every=None if per_epoch == 1 else steps_per_epoch // per_epoch)
        paths.append(_phase_path(checkpoint_path, "admm"))
        if admm_epochs > 0:
            history += _tag(fit(model, bundle, indices, replace(config, epochs=admm_epochs),
                                device=device, progress=progress, checkpoint_path=paths[-1],
                                callback=compose_callbacks(admm_cb, callback_extra)), phase="admm")
        masks = {name: torch.ones_like(m.weight, dtype=torch.bool).cpu() for name, m in layers.items()}
        masks.update(admm_cb.hard_masks(model))
        apply_masks(model, masks)
        info["admm"] = {**settings.to_dict(), "rho_growth_used": growth, "rho_final": admm_cb.rho}
        history.append({"epoch": admm_epochs, **evaluate(model, bundle, indices, device=device),
                        "phase": "hard_prune"})
        paths.append(_phase_path(checkpoint_path, "retrain"))
        if retrain_epochs > 0:
            history += _tag(fit(model, bundle, indices, replace(config, epochs=retrain_epochs),
                                device=device, progress=progress, checkpoint_path=paths[-1],
                                callback=compose_callbacks(callback_extra, MaskCallback(masks))),
                            phase="retrain")
    else:
        budget = admm_epochs + retrain_epochs
        rounds = 1 if method == "magnitude" else min(iterative_rounds, budget)
        per_round = [budget // rounds + (1 if r < budget % rounds else 0) for r in range(rounds)]
        final = global_target
        masks: dict[str, torch.Tensor] = {}
        for r in range(1, rounds + 1):
            density = (1.0 - final) ** (r / rounds) if final is not None else None
            round_targets = {n: 1.0 - (1.0 - s) ** (r / rounds) for n, s in targets.items()}
            amount = ((round_targets if r < rounds else targets) if final is None
                      else (1.0 - density if r < rounds else final))
            # the pruned weights are zero, so each round keeps them pruned (see .magnitude)
            stacked = magnitude_masks({n: m.weight.detach().unsqueeze(0) for n, m in layers.items()},
                                      amount)
            masks = {n: mask[0].cpu() for n, mask in stacked.items()}
            apply_masks(model, masks)
            history.append({"epoch": 0, **evaluate(model, bundle, indices, device=device),
                            "phase": "hard_prune", "round": r})
            paths.append(_phase_path(checkpoint_path, f"finetune{r}"))
            rows = fit(model, bundle, indices, replace(config, epochs=per_round[r - 1]),
                       device=device, progress=progress, checkpoint_path=paths[-1],
                       callback=compose_callbacks(callback_extra, MaskCallback(masks)))
            history += _tag(rows, phase="finetune", round=r)
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
    info["history"] = history
    info["train_acc_before_retrain"] = _before_retrain(history)
    info["sparsity_per_layer"] = sparsity_per_layer(model)
    return model, masks, info
