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

``magnitude``  one-shot magnitude pruning with ``torch.nn.utils.prune`` (a *global* threshold
               over all prunable weights when ``sparsity`` is one number, the layer's own
               threshold for a per-layer profile), fine-tuned, then made permanent with
               ``prune.remove``;
``iterative``  the same in several rounds (``iterative_rounds``, default 3), each pruning a
               fixed share of what remains (density ``(1 - s) ** (r / R)`` after round ``r``)
               and fine-tuning in between (Han et al. 2015).

Every method gets the same training budget after the dense model, ``admm_epochs +
retrain_epochs`` (by default half the target's epochs each), so the comparison is about the
method, not the number of epochs. Prunable weights are those of every ``Conv2d`` and
``Linear`` (not biases, not norm layers); see :func:`~mcmia_helpers.defences.compression.prunable_layers`.
One overall sparsity is spread over the layers by :func:`default_sparsity_profile` (small
layers pruned less); :func:`prune_filters_vgg` is the structured alternative that removes
whole filters and so really runs faster on a CPU.

Structured pruning as a defence (``pruning: filter``, the small-image VGG16 only): the dense
target loses the same share of filters in every convolution (Li et al. 2017, smallest L1 norms
first), at the ratio whose narrow model keeps as many prunable weights as unstructured pruning
at the requested sparsity (:func:`filter_budget`), and the narrow model is fine-tuned for the
same budget as the other methods (``admm_epochs + retrain_epochs``). Unstructured pruning buys
a smaller file (zeros compress) but no CPU speed-up; filter pruning buys both, because the
result is an ordinary dense model with fewer channels. Its shapes differ from the dense
model's, so its cache entry names them (``filter_channels`` in the entry's configuration) and
:func:`vgg_with_channels` rebuilds that form before the weights are loaded.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn
from torch.nn.utils import prune

from mcmia_helpers.defences.compression import (compression_report, effective_weight,
                                                prunable_layers, sparsity_per_layer)
from mcmia_helpers.context import TargetContext
from mcmia_helpers.data import DatasetBundle
from mcmia_helpers.defences.registry import train_undefended
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import VGG16Small
from mcmia_helpers.training import (TrainConfig, TrainingCallback, evaluate, fit, get_device,
                                    load_or_train)

__all__ = ["METHODS", "ADMMSettings", "ADMMCallback", "MaskCallback", "CombinedCallback",
           "compose_callbacks", "apply_masks", "masks_from_model", "sparsity_per_layer",
           "default_sparsity_profile", "resolve_sparsity", "load_sparsity_spec",
           "check_sparsity", "project", "prune_model", "train_pruned", "validate_pruning_params",
           "prune_filters_vgg", "PARAM_DEFAULTS", "PRUNING_CHOICES", "global_threshold_targets",
           "STRUCTURED", "check_pruning_arch", "conv_channels", "filter_channels",
           "narrow_param_counts", "filter_budget", "vgg_with_channels", "structured_report"]

#: Bump when a change to pruning makes cached pruned models wrong.
PRUNING_VERSION = 1

METHODS: tuple[str, ...] = ("admm", "magnitude", "iterative")

#: The ``pruning`` choices of the ``prune`` defence: an algorithm and how one overall sparsity
#: is spread over the layers (its *allocation*). Each algorithm's own allocation is its plain
#: name: ADMM uses :func:`default_sparsity_profile`, the magnitude methods one global threshold.
#: The swapped allocations are controls that separate the algorithm from the allocation (the
#: book's chapter 6): ``magnitude-profile`` prunes by magnitude to ADMM's per-layer targets,
#: ``admm-global`` runs ADMM to the per-layer sparsities a global magnitude threshold gives the
#: dense model. ``filter`` is structured pruning (:data:`STRUCTURED`, VGG16 only): whole filters
#: removed, the same share in every convolution, at the ratio that keeps as many prunable
#: weights as unstructured pruning at that sparsity (:func:`filter_budget`); the result is a
#: narrower dense model, faster on a CPU, where the unstructured choices only zero weights.
PRUNING_CHOICES: dict[str, tuple[str, str]] = {
    "admm": ("admm", "profile"),
    "magnitude": ("magnitude", "global"),
    "iterative": ("iterative", "global"),
    "admm-global": ("admm", "global"),
    "magnitude-profile": ("magnitude", "profile"),
    "iterative-profile": ("iterative", "profile"),
    "filter": ("filter", "uniform"),
}
#: The structured choice, L1-norm filter pruning (Li et al. 2017) of the small-image VGG16.
STRUCTURED = "filter"

#: The ``params`` a ``prune`` experiment accepts, with their defaults.
PARAM_DEFAULTS: dict[str, Any] = {"pruning": "admm", "sparsity": 0.9, "sparsity_spec": None}

Sparsity = Union[float, Mapping[str, float], str, os.PathLike]


# --------------------------------------------------------------------------- sparsity targets


def check_sparsity(value: Any, layer: str | None = None) -> float:
    """``value`` as a float in [0, 1), or a one-line :class:`UserError`."""
    where = f" for layer '{layer}'" if layer else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"sparsity {value!r}{where} is not a number: use e.g. 0.9")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UserError(f"sparsity {value:g}{where} is outside [0, 1): use e.g. 0.9")
    return value


def load_sparsity_spec(path: str | os.PathLike) -> dict[str, float]:
    """A per-layer sparsity spec from a JSON or YAML file: ``{layer_name: sparsity}``.

    Layer names are module names as in ``model.named_modules()`` (``features.0``); a trailing
    ``.weight`` is accepted. The key ``default`` sets the sparsity of layers not listed (else 0).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"sparsity spec {path} does not exist: give a JSON or YAML file "
                        "mapping layer names to sparsities")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"sparsity spec {path} is not UTF-8 text (byte {exc.start}): write a JSON "
                        "or YAML mapping such as {\"features.0\": 0.5, \"default\": 0.9}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot parse sparsity spec {path} ({first}): write a JSON or YAML "
                        "mapping such as {\"features.0\": 0.5, \"default\": 0.9}") from None
    if not isinstance(data, Mapping) or not data:
        raise UserError(f"sparsity spec {path} is not a mapping of layer names to sparsities: "
                        "write e.g. {\"features.0\": 0.5, \"default\": 0.9}")
    return {str(name): check_sparsity(value, str(name)) for name, value in data.items()}


def _layer_list(names) -> str:
    names = list(names)
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def resolve_sparsity(model: nn.Module, sparsity: Sparsity) -> dict[str, float]:
    """Per-layer sparsity targets ``{layer_name: s}`` for every prunable layer of ``model``.

    ``sparsity`` is one number (the same for every layer), a mapping ``{layer_name: s}``
    (unlisted layers get the mapping's ``default``, else 0), or the path of a JSON/YAML spec
    file holding such a mapping. An unknown layer name is a :class:`UserError` naming it.
    """
    layers = prunable_layers(model)
    if isinstance(sparsity, (str, os.PathLike)):
        sparsity = load_sparsity_spec(sparsity)
    if isinstance(sparsity, Mapping):
        given = {str(k).removesuffix(".weight"): v for k, v in sparsity.items()}
        default = check_sparsity(given.pop("default", 0.0), "default")
        for name in given:
            if name not in layers:
                raise UserError(f"sparsity spec names unknown layer '{name}': prunable layers "
                                f"are {_layer_list(layers)}")
        return {name: check_sparsity(given.get(name, default), name) for name in layers}
    value = check_sparsity(sparsity)
    return {name: value for name in layers}


def default_sparsity_profile(model: nn.Module, target: float,
                             conv_factor: float = 2.0) -> dict[str, float]:
    """Per-layer sparsities that prune ``target`` of all prunable weights, small layers less.

    Each layer keeps a density proportional to its Erdos-Renyi-kernel score (Evci et al.
    2020, "Rigging the Lottery"): ``sum(shape) / prod(shape)`` of its weight, which is large
    for small layers (the first convolution, the output layer) and small for the big ones
    that hold most of the weights; convolutions get ``conv_factor`` times more (they share
    each weight across all positions, so every pruned conv weight costs more accuracy than a
    fully-connected one). Densities are capped at 1 and the common scale is found by
    bisection so that the weighted sparsity equals ``target``. On LeNet-5 at 90% this gives
    about 0% / 82% for the two convolutions and 93% / 86% / 25% for the three linear layers,
    close to the per-layer ratios of Deep Compression (Han et al. 2015) for LeNet-5.
    """
    target = check_sparsity(target)
    layers = prunable_layers(model)
    if not layers:
        raise UserError("this model has no conv or linear layer to prune")
    sizes, scores = {}, {}
    for name, module in layers.items():
        shape = module.weight.shape
        sizes[name] = module.weight.numel()
        scores[name] = sum(shape) / sizes[name] * (conv_factor if isinstance(module, nn.Conv2d) else 1.0)
    total, keep = sum(sizes.values()), (1.0 - target) * sum(sizes.values())

    def kept(scale: float) -> float:
        return sum(n * min(1.0, scale * scores[k]) for k, n in sizes.items())

    low, high = 0.0, 1.0 / min(scores.values())
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) < keep else (low, mid)
    scale = (low + high) / 2
    profile = {k: max(0.0, 1.0 - min(1.0, scale * scores[k])) for k in sizes}
    assert abs(sum(sizes[k] * profile[k] for k in sizes) / total - target) < 1e-6
    return profile


def global_threshold_targets(model: nn.Module, sparsity: float) -> dict[str, float]:
    """The per-layer sparsities that one global magnitude threshold gives ``model``.

    The threshold keeps the ``1 - sparsity`` largest-magnitude weights over all prunable layers
    together (as ``magnitude`` pruning does); each layer's target is the share of its own
    weights below it. ADMM run to these targets (``admm-global``) has magnitude pruning's
    allocation, so the two algorithms can be compared at one allocation.
    """
    sparsity = check_sparsity(sparsity)
    layers = prunable_layers(model)
    weights = {name: effective_weight(m).detach().abs().flatten().cpu() for name, m in layers.items()}
    everything = torch.cat(list(weights.values()))
    k = n_pruned(everything.numel(), sparsity)
    if k == 0:
        return {name: 0.0 for name in weights}
    threshold = everything.kthvalue(k).values
    return {name: float((w <= threshold).sum()) / w.numel() for name, w in weights.items()}


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


# --------------------------------------------------------------------------- masks


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
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the weights that ``masks`` (``True`` = keep) prune, in place; return ``model``."""
    for name, mask in masks.items():
        weight = _weight_param(_layer(model, name))
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
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


# --------------------------------------------------------------------------- ADMM


@dataclass(frozen=True)
class ADMMSettings:
    """ADMM's penalty schedule (defaults from the framework's published code, see module doc).

    ``rho`` starts at ``rho_init`` and is multiplied after every Z/U update by at least
    ``rho_growth``, and by more when the ADMM phase has too few updates for ``rho`` to reach
    ``rho_max`` at that pace (so that the last epoch always trains at ``rho_max``).
    ``updates_per_epoch`` Z/U updates are spread evenly over each epoch (the framework: one).
    """

    rho_init: float = 1e-3
    rho_growth: float = 1.3
    rho_max: float = 1.0
    updates_per_epoch: int = 1

    def growth_for(self, n_updates: int) -> float:
        """The growth factor used in a phase of ``n_updates`` Z/U updates."""
        if n_updates <= 1 or self.rho_max <= self.rho_init:
            return self.rho_growth
        return max(self.rho_growth, (self.rho_max / self.rho_init) ** (1.0 / (n_updates - 1)))

    def to_dict(self) -> dict:
        return asdict(self)


class ADMMCallback(TrainingCallback):
    """ADMM's state (``Z``, ``U``, ``rho``) as a training callback.

    ``extra_loss`` is the penalty ``rho/2 * sum_l ||W_l - Z_l + U_l||^2``; the Z- and U-steps run
    every ``update_every`` optimiser steps (or at the end of each epoch when ``None``). The
    state round-trips through ``state_dict`` so an interrupted ADMM phase resumes exactly.
    ``targets`` maps layer names to sparsities; layers at sparsity 0 carry no constraint.
    """

    def __init__(self, model: nn.Module, targets: Mapping[str, float], rho_init: float = 1e-3,
                 rho_growth: float = 1.3, rho_max: float = 1.0,
                 update_every: int | None = None) -> None:
        if not (rho_init > 0 and rho_growth >= 1 and rho_max >= rho_init):
            raise UserError(f"ADMM needs rho_init > 0, rho_growth >= 1 and rho_max >= rho_init "
                            f"(got {rho_init}, {rho_growth}, {rho_max}): use 1e-3, 1.3, 1.0")
        self.targets = {name: check_sparsity(s, name) for name, s in targets.items() if s > 0}
        self.rho_growth, self.rho_max = float(rho_growth), float(rho_max)
        self.update_every = update_every
        self.rho = float(rho_init)
        self.steps = 0
        self.updates = 0
        with torch.no_grad():
            weights = self._weights(model)
            self.Z = {n: w.detach() * project(w, self.targets[n]) for n, w in weights.items()}
            self.U = {n: torch.zeros_like(w) for n, w in weights.items()}

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: _weight_param(_layer(model, name)) for name in self.targets}

    def _sync(self, weights: dict[str, torch.Tensor]) -> None:
        for name, w in weights.items():
            if self.Z[name].device != w.device:
                self.Z[name], self.U[name] = self.Z[name].to(w.device), self.U[name].to(w.device)

    def extra_loss(self, model, x, y, logits):
        weights = self._weights(model)
        if not weights:
            return None
        self._sync(weights)
        total = sum((w.float() - self.Z[n] + self.U[n]).pow(2).sum() for n, w in weights.items())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One Z-step and U-step, then ``rho`` grows (and ``U`` is rescaled to match)."""
        weights = self._weights(model)
        self._sync(weights)
        for name, w in weights.items():
            w = w.detach().float()
            candidate = w + self.U[name]
            self.Z[name] = candidate * project(candidate, self.targets[name])
            self.U[name] = candidate - self.Z[name]  # U + W - Z
        new_rho = min(self.rho * self.rho_growth, self.rho_max)
        for name in self.U:
            self.U[name] *= self.rho / new_rho
        self.rho = new_rho
        self.updates += 1

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.update_every and self.steps % self.update_every == 0:
            self.update(model)

    @torch.no_grad()
    def residual(self, model: nn.Module) -> float:
        """``||W - Z|| / ||W||`` over all constrained layers: how far W is from sparse."""
        weights = self._weights(model)
        self._sync(weights)
        num = sum(float((w.float() - self.Z[n]).pow(2).sum()) for n, w in weights.items())
        den = sum(float(w.float().pow(2).sum()) for w in weights.values())
        return math.sqrt(num / den) if den > 0 else 0.0

    def epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float]:
        if not self.update_every:
            self.update(model)
        return {"rho": self.rho, "admm_residual": self.residual(model),
                "admm_updates": self.updates}

    def hard_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The final projection of ``W`` itself: ``{layer: keep mask}`` for every constrained layer."""
        return {name: project(w, self.targets[name]).cpu()
                for name, w in self._weights(model).items()}

    def state_dict(self) -> dict:
        return {"Z": {n: z.cpu() for n, z in self.Z.items()},
                "U": {n: u.cpu() for n, u in self.U.items()},
                "rho": self.rho, "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.Z = {n: z.clone() for n, z in state["Z"].items()}
        self.U = {n: u.clone() for n, u in state["U"].items()}
        self.rho, self.steps, self.updates = float(state["rho"]), int(state["steps"]), int(state["updates"])


# --------------------------------------------------------------------------- prune_model


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
    :func:`resolve_sparsity`); for ``magnitude``/``iterative`` one number means one global
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
        for r in range(1, rounds + 1):
            density = (1.0 - final) ** (r / rounds) if final is not None else None
            round_targets = {n: 1.0 - (1.0 - s) ** (r / rounds) for n, s in targets.items()}
            _torch_prune(layers, round_targets if r < rounds else targets,
                         None if final is None else (1.0 - density if r < rounds else final))
            history.append({"epoch": 0, **evaluate(model, bundle, indices, device=device),
                            "phase": "hard_prune", "round": r})
            paths.append(_phase_path(checkpoint_path, f"finetune{r}"))
            rows = fit(model, bundle, indices, replace(config, epochs=per_round[r - 1]),
                       device=device, progress=progress, checkpoint_path=paths[-1],
                       callback=compose_callbacks(callback_extra))
            history += _tag(rows, phase="finetune", round=r)
        masks = {name: module.weight_mask.detach().bool().cpu() for name, module in layers.items()}
        for module in layers.values():
            prune.remove(module, "weight")
        apply_masks(model, masks)
    for path in paths:
        if path is not None:
            path.unlink(missing_ok=True)
    info["history"] = history
    info["train_acc_before_retrain"] = _before_retrain(history)
    info["sparsity_per_layer"] = sparsity_per_layer(model)
    return model, masks, info


# --------------------------------------------------------------------------- experiments


def validate_pruning_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``prune`` defence's ``params`` with defaults filled in, or a one-line :class:`UserError`.

    Keys: ``pruning`` (one of :data:`PRUNING_CHOICES`; default admm), ``sparsity`` (overall
    target in [0, 1), default 0.9) and ``sparsity_spec`` (a JSON/YAML per-layer file that,
    when given, replaces ``sparsity``; its layer names are checked against the model later).
    """
    unknown = sorted(set(params) - set(PARAM_DEFAULTS))
    if unknown:
        raise UserError(f"unknown pruning parameter(s) {unknown}: use {sorted(PARAM_DEFAULTS)}")
    out = {**PARAM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if out["pruning"] not in PRUNING_CHOICES:
        raise UserError(f"pruning method '{out['pruning']}' is unknown: choose "
                        f"{', '.join(PRUNING_CHOICES)}")
    out["sparsity"] = check_sparsity(out["sparsity"])
    if out["sparsity_spec"] is not None:
        if out["pruning"] == STRUCTURED:
            raise UserError("--pruning filter removes the same share of filters in every layer: "
                            "give one --sparsity, not a --sparsity-spec file")
        out["sparsity_spec"] = str(out["sparsity_spec"])
        load_sparsity_spec(out["sparsity_spec"])
    return out


def check_pruning_arch(params: Mapping[str, Any], arch: str) -> None:
    """A one-line :class:`UserError` when the pruning choice in ``params`` cannot prune ``arch``.

    The parameter validator does not see the architecture, so the callers that do check here
    before any training: :func:`train_pruned` (before the dense model) and the zoo's
    ``ZooSpec.validate``. Filter pruning exists for the small-image VGG16 only.
    """
    if params.get("pruning") == STRUCTURED and arch != "vgg16":
        raise UserError(f"--pruning filter removes whole filters of vgg16 only (got --arch {arch}): "
                        "use --arch vgg16, or an unstructured --pruning such as magnitude")


def train_pruned(ctx: TargetContext, *, params: Mapping[str, Any] | None = None,
                 dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None = None,
                 callback_extra: Callable[[], TrainingCallback] | None = None,
                 cache_extra: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The ``prune`` defence: prune the undefended target (``ctx.spec.params``) and report it.

    Combined defences reuse it (``prune+minmax``): ``params`` replaces ``ctx.spec.params``
    (pruning keys only), ``dense()`` gives the starting model and its info (default: the
    ``none`` defence's), a fresh ``callback_extra()`` joins the ADMM W-steps and the masked
    retraining (see :func:`prune_model`), and ``cache_extra`` extends the cache key.

    The dense model is the ``none`` defence's (same cache entry, trained once); the pruned
    model is cached under the full configuration. ``sparsity`` is the overall target on the
    prunable weights: ADMM spreads it with :func:`default_sparsity_profile`, the magnitude
    baselines with one global threshold; a ``sparsity_spec`` file fixes every layer instead.
    ``pruning: filter`` (VGG16 only; any other architecture is a one-line error before any
    training) is structured pruning instead (see the module docstring): whole filters removed
    at :func:`filter_budget`'s ratio, the narrow model fine-tuned for ``admm_epochs +
    retrain_epochs``; its record has the same fields, counted against the dense model
    (:func:`structured_report`), plus ``filter_ratio``, ``filter_channels``, ``params_dense``,
    ``params_kept``, ``param_share`` and ``param_share_total``.
    Extra record fields: the compression report (``sparsity_per_layer``,
    ``compression_ratio``, ``compression_ratio_prunable``, the raw and compressed file sizes
    and their ratios, ``flops_dense``, ``flops_effective``) plus ``pruning``,
    ``sparsity``, ``sparsity_targets``, ``sparsity_achieved``, ``train_acc_before_retrain``,
    the epochs and ``history`` (ADMM, hard-prune and retraining rows, each with its ``phase``).
    """
    params = validate_pruning_params(ctx.spec.params if params is None else params)
    choice = params["pruning"]
    check_pruning_arch(params, ctx.spec.arch)
    if choice == STRUCTURED:
        return _train_filter_pruned(ctx, params, dense, callback_extra, cache_extra)
    method, allocation = PRUNING_CHOICES[choice]
    dense_model, dense_info = _dense_start(ctx, dense)
    probe = ctx.build()
    if params["sparsity_spec"] is not None:
        sparsity: Sparsity = resolve_sparsity(probe, params["sparsity_spec"])
    elif allocation == "profile":
        sparsity = default_sparsity_profile(probe, params["sparsity"])
    elif method == "admm":  # ADMM needs per-layer targets: those of one global threshold
        sparsity = global_threshold_targets(dense_model, params["sparsity"])
    else:
        sparsity = params["sparsity"]  # one global threshold, inside prune_model
    targets = resolve_sparsity(probe, sparsity)
    sizes = {name: m.weight.numel() for name, m in prunable_layers(probe).items()}
    overall = (params["sparsity"] if params["sparsity_spec"] is None else
               sum(sizes[n] * s for n, s in targets.items()) / sum(sizes.values()))
    epochs = max(1, ctx.train_config.epochs // 2)
    settings = ADMMSettings()
    normalised = replace(ctx, spec=replace(ctx.spec, params=params))  # same key, however spelled
    key_targets = sparsity if isinstance(sparsity, dict) else {"global": sparsity}
    config = normalised.cache_config(pruning=method if choice == method else choice,
                                     sparsity_targets=key_targets,
                                     admm_epochs=epochs, retrain_epochs=epochs,
                                     admm=settings.to_dict(), iterative_rounds=3,
                                     pruning_version=PRUNING_VERSION, **(cache_extra or {}))
    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        _, _, info = prune_model(model, ctx.bundle, ctx.split.members, ctx.train_config, method,
                                 sparsity, admm_epochs=epochs, retrain_epochs=epochs,
                                 callback_extra=callback_extra() if callback_extra else None,
                                 device=ctx.device, progress=ctx.progress, admm=settings,
                                 checkpoint_path=checkpoint)
        return info["history"]

    model, cache_info = load_or_train(config, lambda: copy.deepcopy(dense_model), train)
    report = compression_report(model, (ctx.bundle.in_channels, ctx.bundle.image_size,
                                        ctx.bundle.image_size), file_sizes=not ctx.is_shadow)
    extra = {key: report[key] for key in (
        "sparsity_per_layer", "compression_ratio", "compression_ratio_prunable",
        "size_dense_bytes", "size_sparse_raw_bytes", "size_ratio_raw",
        "size_dense_compressed_bytes", "size_sparse_bytes", "size_ratio_compressed",
        "flops_dense", "flops_effective") if key in report}
    extra.update({
        "pruning": choice, "pruning_algorithm": method,
        "sparsity_allocation": "file" if params["sparsity_spec"] is not None else allocation,
        "sparsity": overall, "sparsity_spec": params["sparsity_spec"],
        "sparsity_targets": key_targets,
        "sparsity_achieved": report["sparsity"],
        "admm_epochs": epochs if method == "admm" else 0,
        "retrain_epochs": epochs if method == "admm" else 2 * epochs,
        "train_acc_before_retrain": _before_retrain(cache_info["history"]),
        "dense_cached": dense_info.get("cached"), "cached": cache_info["cached"],
        "history": cache_info["history"],
    })
    return model, extra


def _dense_start(ctx: TargetContext, dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """The model pruning starts from and its info: ``dense()``, else the ``none`` defence's
    target (its own cache entry, trained once)."""
    if dense is not None:
        return dense()
    return train_undefended(replace(ctx, spec=replace(ctx.spec, defense="none", params={})))


def _train_filter_pruned(ctx: TargetContext, params: Mapping[str, Any],
                         dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None,
                         callback_extra: Callable[[], TrainingCallback] | None,
                         cache_extra: Mapping[str, Any] | None) -> tuple[nn.Module, dict[str, Any]]:
    """``pruning: filter`` of :func:`train_pruned`: structured pruning of the dense VGG16.

    The filter ratio is :func:`filter_budget`'s for ``params["sparsity"]`` (the narrow model
    keeps about as many prunable weights as unstructured pruning at that sparsity); the
    narrow model (:func:`prune_filters_vgg` of the dense target) is fine-tuned on the members
    for ``admm_epochs + retrain_epochs`` (``2 * max(1, epochs // 2)``), the budget every
    pruning method gets after the dense model, with ``callback_extra`` (the Min-Max game) if
    given. The cache key names the kept width of every convolution (``filter_channels``, also
    stored in the entry's configuration), from which :func:`vgg_with_channels` builds the
    narrow form before the cached weights are loaded (digest-checked and strict, as every
    cached model). Record fields: those of :func:`structured_report` plus ``filter_ratio``,
    ``filter_channels`` and the fields every pruning record has.
    """
    probe = ctx.build()
    _check_vgg(probe)  # e.g. the ImageNet form of vgg16: rejected before any training
    budget = filter_budget(probe, params["sparsity"])
    ratio, channels = budget["filter_ratio"], budget["filter_channels"]
    dense_model, dense_info = _dense_start(ctx, dense)
    epochs = 2 * max(1, ctx.train_config.epochs // 2)
    normalised = replace(ctx, spec=replace(ctx.spec, params=dict(params)))
    config = normalised.cache_config(pruning=STRUCTURED, filter_ratio=ratio,
                                     filter_channels=channels, retrain_epochs=epochs,
                                     pruning_version=PRUNING_VERSION, **(cache_extra or {}))

    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        model.load_state_dict(prune_filters_vgg(dense_model, ratio).state_dict())
        model.to(ctx.device)
        pruned = {"epoch": 0, **evaluate(model, ctx.bundle, ctx.split.members, device=ctx.device),
                  "phase": "hard_prune"}
        rows = fit(model, ctx.bundle, ctx.split.members, replace(ctx.train_config, epochs=epochs),
                   device=ctx.device, progress=ctx.progress, checkpoint_path=checkpoint,
                   callback=compose_callbacks(callback_extra() if callback_extra else None))
        return [pruned] + _tag(rows, phase="finetune")

    model, cache_info = load_or_train(config, lambda: vgg_with_channels(probe, channels), train)
    model.to(ctx.device)
    extra = structured_report(dense_model, model, (ctx.bundle.in_channels, ctx.bundle.image_size,
                                                   ctx.bundle.image_size),
                              file_sizes=not ctx.is_shadow)
    extra.update({
        "pruning": STRUCTURED, "pruning_algorithm": STRUCTURED, "sparsity_allocation": "uniform",
        "sparsity": params["sparsity"], "sparsity_spec": None,
        "sparsity_targets": {"global": params["sparsity"]},
        "filter_ratio": ratio, "filter_channels": channels,
        "admm_epochs": 0, "retrain_epochs": epochs,
        "train_acc_before_retrain": _before_retrain(cache_info["history"]),
        "dense_cached": dense_info.get("cached"), "cached": cache_info["cached"],
        "history": cache_info["history"],
    })
    return model, extra


# --------------------------------------------------------------------------- structured pruning


def _check_vgg(model: nn.Module) -> None:
    """A one-line :class:`UserError` unless ``model`` is the small-image VGG16."""
    if not isinstance(model, VGG16Small):
        raise UserError(f"filter pruning is implemented for the small-image vgg16 only (got "
                        f"{type(model).__name__}): use build_model('vgg16', image_size=32)")


def _kept(channels: int, ratio: float) -> int:
    """How many of a convolution's ``channels`` filters stay at filter ratio ``ratio`` (>= 1)."""
    return max(1, channels - int(round(ratio * channels)))


def _keep_filters(conv: nn.Conv2d, ratio: float) -> torch.Tensor:
    """Indices (sorted) of the output filters with the largest L1 norms, ``1 - ratio`` of them."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.topk(norms, _kept(conv.out_channels, ratio), sorted=False).indices.sort().values


def conv_channels(model: nn.Module) -> list[int]:
    """The output width of every convolution of a small-image VGG16, in order: what fixes the
    shapes of a filter-pruned model (with the dense model it came from)."""
    _check_vgg(model)
    return [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]


def filter_channels(model: nn.Module, ratio: float) -> list[int]:
    """The convolution widths :func:`prune_filters_vgg` leaves at ``ratio``: each conv keeps
    ``max(1, c - round(ratio * c))`` of its ``c`` filters."""
    ratio = check_sparsity(ratio)
    return [_kept(c, ratio) for c in conv_channels(model)]


def _check_channels(model: nn.Module, channels: Any) -> list[int]:
    """``channels`` as one width per convolution of ``model``, each in ``[1, dense width]``."""
    dense = conv_channels(model)
    ok = (isinstance(channels, (list, tuple)) and len(channels) == len(dense)
          and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= d
                  for c, d in zip(channels, dense)))
    if not ok:
        raise UserError(f"conv widths {channels!r} do not fit this vgg16 (widths {dense}): give "
                        f"{len(dense)} integers, each between 1 and the dense width")
    return [int(c) for c in channels]


def narrow_param_counts(model: nn.Module, channels: list[int]) -> dict[str, int]:
    """Parameters of ``model``'s narrow form with convolution widths ``channels``, counted from
    ``model``'s own layers (kernel sizes, biases, affine norms, classifier) without building it:
    ``prunable`` (conv and linear weights, what sparsity is measured on) and ``total``."""
    channels = _check_channels(model, channels)
    prunable = total = 0
    width: int | None = None
    convs = iter(channels)
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            out, kh, kw = next(convs), *module.kernel_size
            weights = out * (module.in_channels if width is None else width) * kh * kw
            prunable += weights
            total += weights + (out if module.bias is not None else 0)
            width = out
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            total += 2 * width
    head = model.classifier
    prunable += head.out_features * width
    total += head.out_features * width + (head.out_features if head.bias is not None else 0)
    return {"prunable": prunable, "total": total}


def filter_budget(model: nn.Module, sparsity: float, steps: int = 4096) -> dict[str, Any]:
    """The filter ratio that gives unstructured pruning's parameter budget at ``sparsity``.

    Unstructured pruning at sparsity ``s`` keeps ``(1 - s)`` of the prunable weights (conv and
    linear weights; biases and norms stay). This searches the ratios ``i / steps`` on
    ``model``'s actual layers (:func:`narrow_param_counts`; no ``(1 - r)**2`` shortcut: the
    first conv's input and the classifier's output do not shrink, and widths are rounded) for
    the narrow model whose prunable weight count is closest to ``(1 - s)`` of the dense one
    (ties: the smaller ratio). Returns ``filter_ratio``, ``filter_channels``,
    ``prunable_dense``, ``prunable_kept``, ``param_share`` (kept / dense prunable weights),
    ``params_dense``, ``params_kept`` and ``param_share_total`` (all parameters).
    """
    sparsity = check_sparsity(sparsity)
    dense_widths = conv_channels(model)
    dense = narrow_param_counts(model, dense_widths)
    target = (1.0 - sparsity) * dense["prunable"]
    best: tuple[float, float, list[int], dict[str, int]] | None = None
    seen: set[tuple[int, ...]] = set()
    for i in range(steps):
        ratio = i / steps
        widths = [_kept(c, ratio) for c in dense_widths]
        if tuple(widths) in seen:
            continue
        seen.add(tuple(widths))
        counts = narrow_param_counts(model, widths)
        gap = abs(counts["prunable"] - target)
        if best is None or gap < best[0]:
            best = (gap, ratio, widths, counts)
    _, ratio, widths, counts = best
    return {"filter_ratio": ratio, "filter_channels": widths,
            "prunable_dense": dense["prunable"], "prunable_kept": counts["prunable"],
            "param_share": counts["prunable"] / dense["prunable"],
            "params_dense": dense["total"], "params_kept": counts["total"],
            "param_share_total": counts["total"] / dense["total"]}


def _slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """``norm`` restricted to channels ``idx`` (BatchNorm sliced; GroupNorm regrouped by gcd)."""
    n = len(idx)
    if isinstance(norm, nn.BatchNorm2d):
        new = nn.BatchNorm2d(n, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[idx])
            new.running_var.copy_(norm.running_var[idx])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    elif isinstance(norm, nn.GroupNorm):
        new = nn.GroupNorm(math.gcd(n, norm.num_groups), n, norm.eps, norm.affine)
    else:
        raise UserError(f"cannot slice a {type(norm).__name__} after a pruned conv: use the "
                        "vgg16 model of build_model")
    if getattr(norm, "affine", False):
        new.weight.data.copy_(norm.weight.detach()[idx])
        new.bias.data.copy_(norm.bias.detach()[idx])
    return new


@torch.no_grad()
def _narrow_vgg(model: nn.Module, select: Callable[[int, nn.Conv2d], torch.Tensor]) -> nn.Module:
    """A copy of VGG16 ``model`` in which conv ``i`` keeps the filters ``select(i, conv)``
    (sorted indices), with their norm channels and the next layer's matching inputs."""
    device = next(model.parameters()).device
    layers: list[nn.Module] = []
    in_idx: torch.Tensor | None = None
    convs = 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            out_idx = select(convs, module)
            convs += 1
            weight = module.weight.detach()[out_idx]
            if in_idx is not None:
                weight = weight[:, in_idx]
            conv = nn.Conv2d(weight.shape[1], len(out_idx), module.kernel_size, module.stride,
                             module.padding, bias=module.bias is not None).to(device)
            conv.weight.copy_(weight)
            if module.bias is not None:
                conv.bias.copy_(module.bias.detach()[out_idx])
            layers.append(conv)
            in_idx = out_idx
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            layers.append(_slice_norm(module, in_idx).to(device))
        else:
            layers.append(copy.deepcopy(module))
    old = model.classifier
    classifier = nn.Linear(len(in_idx), old.out_features, bias=old.bias is not None).to(device)
    classifier.weight.copy_(old.weight.detach()[:, in_idx])
    if old.bias is not None:
        classifier.bias.copy_(old.bias.detach())
    narrow = copy.deepcopy(model)
    narrow.features = nn.Sequential(*layers)
    narrow.classifier = classifier
    narrow.train(model.training)
    return narrow


def prune_filters_vgg(model: nn.Module, ratio: float) -> nn.Module:
    """A narrower copy of a small-image VGG16: ``ratio`` of every conv's filters removed.

    Structured pruning after Li et al. (2017), "Pruning Filters for Efficient ConvNets": in
    each convolution the filters with the smallest L1 norms go, with their norm-layer channels
    and the matching input channels of the next layer (the next conv, or the classifier).
    The result is an ordinary dense model with fewer channels, so it is faster on any CPU
    (unlike unstructured zeros) and can be fine-tuned with :func:`~mcmia_helpers.training.fit`.
    Its widths are :func:`filter_channels` ``(model, ratio)``. ``model`` is left unchanged.
    """
    _check_vgg(model)
    ratio = check_sparsity(ratio)
    return _narrow_vgg(model, lambda i, conv: _keep_filters(conv, ratio))


def vgg_with_channels(model: nn.Module, channels: list[int]) -> nn.Module:
    """The narrow form of VGG16 ``model`` with convolution widths ``channels`` (each conv keeps
    its first filters): the architecture of a filter-pruned model, rebuilt from its recorded
    widths so that its cached weights can be loaded into it (they replace every value).
    GroupNorm layers are regrouped as :func:`prune_filters_vgg` regroups them."""
    channels = _check_channels(model, channels)
    return _narrow_vgg(model, lambda i, conv: torch.arange(channels[i], device=conv.weight.device))


def structured_report(dense: nn.Module, narrow: nn.Module, input_shape: tuple[int, ...],
                      file_sizes: bool = True) -> dict[str, Any]:
    """What filter pruning bought, counted from both models, in the fields of an unstructured
    pruning record (:func:`~mcmia_helpers.defences.compression.compression_report`), so the two
    compare like for like: "dense" is the unpruned ``dense`` model, "sparse" the ``narrow``
    one as it would be shipped. ``sparsity_per_layer`` is the share of each dense layer's
    weights the narrow model no longer has; ``sparsity`` the same over all prunable weights;
    ``compression_ratio(_prunable)`` dense parameters per nonzero kept one; raw and compressed
    file sizes of both; ``flops_dense`` the dense model's MACs and ``flops_effective`` the
    narrow model's (real: no sparse kernel needed). Plus ``params_dense``, ``params_kept``,
    ``param_share`` (kept / dense prunable weights) and ``param_share_total``. ``file_sizes=False``
    leaves the file sizes out, as :func:`~mcmia_helpers.defences.compression.compression_report` does.
    """
    d = compression_report(dense, input_shape, file_sizes=file_sizes)
    n = compression_report(narrow, input_shape, file_sizes=file_sizes)
    report = {
        "sparsity_per_layer": {name: 1.0 - n["layers"][name]["nonzero"] / layer["params"]
                               for name, layer in d["layers"].items()},
        "sparsity_achieved": 1.0 - n["prunable_nonzero"] / d["prunable_total"],
        "params_dense": d["params_total"], "params_kept": n["params_total"],
        "param_share": n["prunable_total"] / d["prunable_total"],
        "param_share_total": n["params_total"] / d["params_total"],
        "compression_ratio": d["params_total"] / max(1, n["params_nonzero"]),
        "compression_ratio_prunable": d["prunable_total"] / max(1, n["prunable_nonzero"]),
        "flops_dense": d["flops_dense"], "flops_effective": n["flops_dense"],
    }
    if not file_sizes:
        return report
    report.update({
        "size_dense_bytes": d["size_dense_bytes"],
        "size_sparse_raw_bytes": n["size_sparse_raw_bytes"],
        "size_ratio_raw": d["size_dense_bytes"] / max(1, n["size_sparse_raw_bytes"]),
        "size_dense_compressed_bytes": d["size_dense_compressed_bytes"],
        "size_sparse_bytes": n["size_sparse_bytes"],
        "size_ratio_compressed": d["size_dense_compressed_bytes"] / max(1, n["size_sparse_bytes"]),
    })
    return report
