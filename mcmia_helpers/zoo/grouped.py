"""Pruning and continued training of many models at once, inside the grouped network.

The zoo's dense models train together on the grouped engine of :mod:`mcmia_helpers.shadow`
(every parameter stacked along a first dimension of size ``M``, each layer run once for all
models). This module does the same for what comes after the dense models, so that a pruned zoo
trains together too:

* **ADMM pruning** (Zhang et al. 2018, as in :func:`~mcmia_helpers.defences.pruning.prune_model`):
  the W-step adds ``rho/2 * ||W_m - Z_m + U_m||^2`` for every model ``m`` to the summed loss
  (each model's slice of the gradient is its own penalty's); the Z-step projects each model's
  ``W_m + U_m`` on its own sparsity constraint (a top-k per model); U and ``rho`` follow. All of
  it is :class:`~mcmia_helpers.defences.pruning.admm.ADMMState`, the same code the one-model
  :class:`~mcmia_helpers.defences.pruning.ADMMCallback` runs (:class:`StackedADMM` only hooks it
  into the grouped loop); then every model is hard-pruned by its own projection and retrained
  with its mask fixed;
* **magnitude pruning**: each model's own global (or per-layer) magnitude threshold
  (:func:`~mcmia_helpers.defences.pruning.magnitude.magnitude_masks`, as the one-model path), then
  fine-tuning with the mask fixed (re-applied after every optimiser step, as
  :class:`~mcmia_helpers.defences.pruning.MaskCallback` does);
* **continued training** (the zoo's ``dense-long``): the dense models trained on.

Every phase starts a fresh optimiser with the phase's epochs, and model ``m`` shuffles with its
own seed from epoch 0, exactly as the one-model-at-a-time path (``prune_model`` through ``fit``)
does, so both give the same models up to float rounding. The loop is the grouped engine's
(:func:`mcmia_helpers.shadow.train_models_batched`) with three hooks (an extra loss, a step
hook and an epoch hook) through which the pruning state acts on the stacked weights; its
optimiser step is :func:`~mcmia_helpers.training.optimiser_step`, the one ``fit`` takes (why the
two loops around it stay two, measured, is in that function's docstring).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.defences.compression import compression_report, prunable_layers
from mcmia_helpers.defences.pruning import (ADMMSettings, ADMMState, magnitude_masks,
                                            mask_tensors)
from mcmia_helpers.io import atomic_torch_save
from mcmia_helpers.shadow import (GroupedNet, grouped_net_for, restore_group_checkpoint,
                                  stack_states, unstack_into)
from mcmia_helpers.training import (TrainConfig, epoch_seed, fit, make_optimizer, make_scheduler,
                                    optimiser_step)


class GroupHooks:
    """What a phase adds to the grouped training loop (the default adds nothing)."""

    def extra_loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        pass

    def epoch_end(self, epoch: int, params: dict[str, torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def save_checkpoint(path: Path, state: dict) -> None:
    """One group's epoch checkpoint, written atomically with its digest."""
    atomic_torch_save(state, path)


def train_stacked(net: GroupedNet, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                  bundle: DatasetBundle, index_sets: Sequence[torch.Tensor], config: TrainConfig,
                  seeds: Sequence[int], device: torch.device, hooks: GroupHooks | None = None,
                  checkpoint: Path | None = None) -> None:
    """One training phase of ``M`` stacked models in place (equal-size index sets): the loop of
    the grouped engine (summed per-model mean cross-entropies, one optimiser on the stacked
    tensors, model ``m`` shuffled by its own ``epoch_seed(seeds[m], epoch)``), plus ``hooks``.

    With ``checkpoint`` the whole group (weights, buffers, optimiser, schedule, the hooks' state)
    is saved atomically after every epoch, and a killed phase resumes from its last finished
    epoch with the same result; a damaged checkpoint is set aside (the phase starts afresh).
    """
    hooks = hooks or GroupHooks()
    n_models = len(index_sets)
    optimizer = make_optimizer(list(params.values()), config)
    scheduler = make_scheduler(optimizer, config)
    index_sets = [torch.as_tensor(idx, dtype=torch.long) for idx in index_sets]
    n = len(index_sets[0])
    start_epoch = 0
    state = restore_group_checkpoint(checkpoint, params, buffers, optimizer, scheduler, device)
    if state is not None:
        hooks.load_state_dict(state.get("hooks", {}))
        start_epoch = int(state["epoch"]) + 1
    for epoch in range(start_epoch, config.epochs):
        gens = [torch.Generator().manual_seed(epoch_seed(s, epoch)) for s in seeds]
        orders = torch.stack([idx[torch.randperm(n, generator=g)] for idx, g in zip(index_sets, gens)])
        for start in range(0, n, config.batch_size):
            chunk = orders[:, start:start + config.batch_size]
            if config.augment:
                parts = [bundle.batch(c, augment=True, generator=g) for c, g in zip(chunk, gens)]
                x, y = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
            else:
                x, y = bundle.batch(chunk.reshape(-1))
                x, y = x.view(n_models, -1, *x.shape[1:]), y.view(n_models, -1)
            x, y = x.to(device), y.to(device)
            def forward() -> tuple[torch.Tensor, torch.Tensor]:
                logits = net.forward(params, buffers, x, training=True)
                return logits, F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                               reduction="none").view(n_models, -1).mean(1).sum()

            optimiser_step(optimizer, device, config.amp, forward,
                           lambda logits: hooks.extra_loss(params), lambda: hooks.after_step(params))
        if scheduler is not None:
            scheduler.step()
        hooks.epoch_end(epoch, params)
        if checkpoint is not None:
            save_checkpoint(checkpoint, {
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "buffers": {k: v.detach().cpu() for k, v in buffers.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "hooks": hooks.state_dict(), "epoch": epoch})


class StackedADMM(GroupHooks):
    """ADMM for stacked models: the grouped loop's hooks around the one
    :class:`~mcmia_helpers.defences.pruning.admm.ADMMState` (``targets`` by layer name)."""

    def __init__(self, params: dict[str, torch.Tensor], targets: Mapping[str, float],
                 rho_init: float, rho_growth: float, rho_max: float) -> None:
        self.state = ADMMState(params, {f"{layer}.weight": s for layer, s in targets.items()},
                               rho_init, rho_growth, rho_max)

    @property
    def rho(self) -> float:
        return self.state.rho

    def extra_loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.state.penalty(params)

    def epoch_end(self, epoch: int, params: dict[str, torch.Tensor]) -> None:
        self.state.update(params)

    def hard_masks(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.state.hard_masks(params)

    def state_dict(self) -> dict:
        return self.state.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.state.load_state_dict(state)  # the tensors follow the weights at the next step


class StackedMasks(GroupHooks):
    """Keeps every model's pruned weights at zero after each optimiser step
    (:func:`~mcmia_helpers.defences.pruning.masks.mask_tensors` on the stacked weights)."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks

    def after_step(self, params: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            mask_tensors(params, self.masks)


def _stacked(models: Sequence[nn.Module], device: torch.device):
    params, buffers = stack_states(models)
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    return params, {k: v.to(device) for k, v in buffers.items()}


def prune_models_batched(models: list[nn.Module], bundle: DatasetBundle,
                         index_sets: Sequence[torch.Tensor], config: TrainConfig,
                         seeds: Sequence[int], method: str, sparsity: float | Mapping[str, float], *,
                         admm_epochs: int, retrain_epochs: int, settings: ADMMSettings,
                         device: torch.device,
                         checkpoint: Path | None = None) -> list[dict[str, Any]] | None:
    """Prune trained dense ``models`` in place, all together, and retrain each on its members.

    ``method`` is ``admm`` (``sparsity`` a ``{layer: s}`` profile) or ``magnitude`` (one number:
    one global threshold per model; a mapping: per layer). Returns one info dict per model
    (method, epochs, ``rho`` schedule, achieved sparsity), or ``None`` when the grouped network
    does not support the architecture or the index sets differ in size (the caller then prunes
    one model at a time, with the same result). ``checkpoint`` (a path) makes every phase
    resumable (files ``<checkpoint>.admm.pt`` and ``<checkpoint>.retrain.pt``, see
    :func:`train_stacked`; the caller deletes them once the models are saved).
    """
    net = grouped_net_for(models[0], bundle)
    if net is None or len({len(i) for i in index_sets}) != 1 or method not in ("admm", "magnitude"):
        return None
    seeds = [int(s) for s in seeds]
    for model in models:
        model.to(device)
    params, buffers = _stacked(models, device)
    layers = list(prunable_layers(models[0]))
    info: dict[str, Any] = {"method": method, "batched": True}
    if method == "admm":
        n = len(index_sets[0])
        steps_per_epoch = -(-n // config.batch_size)
        per_epoch = max(1, min(int(settings.updates_per_epoch), steps_per_epoch))
        if per_epoch != 1:
            return None  # Z/U updates within an epoch: left to the one-at-a-time path
        growth = settings.growth_for(per_epoch * admm_epochs)
        admm = StackedADMM(params, sparsity, settings.rho_init, growth, settings.rho_max)
        if admm_epochs > 0:
            train_stacked(net, params, buffers, bundle, index_sets, replace(config, epochs=admm_epochs),
                          seeds, device, admm, phase_path(checkpoint, "admm"))
        masks = {f"{layer}.weight": torch.ones_like(params[f"{layer}.weight"], dtype=torch.bool)
                 for layer in layers}
        masks.update(admm.hard_masks(params))
        phase_epochs = retrain_epochs
        info.update({"admm_epochs": admm_epochs, "retrain_epochs": retrain_epochs,
                     "admm": {**settings.to_dict(), "rho_growth_used": growth, "rho_final": admm.rho}})
    else:
        keys = [f"{layer}.weight" for layer in layers]
        per_key = ({f"{layer}.weight": float(s) for layer, s in sparsity.items()}
                   if isinstance(sparsity, Mapping) else sparsity)
        masks = magnitude_masks(params, per_key, keys)
        phase_epochs = admm_epochs + retrain_epochs
        info.update({"admm_epochs": 0, "retrain_epochs": phase_epochs})
    keeper = StackedMasks(masks)
    keeper.after_step(params)  # the first batch already sees the pruned models
    if phase_epochs > 0:
        train_stacked(net, params, buffers, bundle, index_sets, replace(config, epochs=phase_epochs),
                      seeds, device, keeper, phase_path(checkpoint, "retrain"))
    unstack_into(models, params, buffers)
    shape = (bundle.in_channels, bundle.image_size, bundle.image_size)
    out = []
    for model in models:
        report = compression_report(model, shape, file_sizes=False)  # sparsity is what a zoo keeps
        out.append({**info, "sparsity_per_layer": report["sparsity_per_layer"],
                    "sparsity_achieved": report["sparsity"],
                    "compression_ratio": report["compression_ratio"]})
    return out


def phase_path(checkpoint: Path | None, phase: str) -> Path | None:
    """The checkpoint file of one phase next to ``checkpoint`` (``None`` stays ``None``)."""
    return None if checkpoint is None else Path(f"{checkpoint}.{phase}.pt")


def _train_together(models: list[nn.Module], bundle: DatasetBundle,
                    index_sets: Sequence[torch.Tensor], config: TrainConfig, seeds: Sequence[int],
                    device: torch.device, checkpoint: Path | None) -> bool:
    """Train ``models`` in place as one grouped network (:func:`train_stacked`); ``False``, with
    nothing trained, where the grouped network does not support the architecture or the index
    sets differ in size."""
    net = grouped_net_for(models[0], bundle)
    if net is None or len({len(i) for i in index_sets}) != 1:
        return False
    for model in models:
        model.to(device)
    params, buffers = _stacked(models, device)
    train_stacked(net, params, buffers, bundle, index_sets, config, [int(s) for s in seeds], device,
                  checkpoint=checkpoint)
    unstack_into(models, params, buffers)
    return True


def train_new_models(builder: Callable[[], nn.Module], bundle: DatasetBundle,
                     index_sets: Sequence[torch.Tensor], config: TrainConfig, seeds: Sequence[int],
                     device: torch.device, checkpoint: Path | None = None) -> list[nn.Module] | None:
    """New models, model ``m`` built under ``torch.manual_seed(seeds[m])``, trained together as
    :func:`~mcmia_helpers.shadow.train_models_batched` trains them (the same loop), with epoch
    checkpoints of the whole group (see :func:`train_stacked`). ``None`` where the grouped
    network does not support the architecture or the index sets differ in size."""
    models = []
    for seed in seeds:
        torch.manual_seed(int(seed))
        models.append(builder())
    if not _train_together(models, bundle, index_sets, config, seeds, device,
                           phase_path(checkpoint, "train")):
        return None
    return models


def continue_training(models: list[nn.Module], bundle: DatasetBundle,
                      index_sets: Sequence[torch.Tensor], config: TrainConfig, seeds: Sequence[int],
                      device: torch.device, progress: bool = False,
                      checkpoint: Path | None = None) -> None:
    """Train already-trained ``models`` on for ``config.epochs`` (a fresh optimiser, model ``m``
    with ``replace(config, seed=seeds[m])``): together when the grouped network supports the
    architecture and the index sets have one size, else one by one with
    :func:`~mcmia_helpers.training.fit` (the same computation)."""
    if not _train_together(models, bundle, index_sets, config, seeds, device,
                           phase_path(checkpoint, "continue")):
        for model, idx, seed in zip(models, index_sets, seeds):
            fit(model, bundle, idx, replace(config, seed=int(seed)), device=device, progress=progress)
