"""One experiment = one target model, one defence, its attacks, and one JSON record.

:func:`run_experiment` is what ``python -m mcmia_helpers run`` and the notebooks call: it checks
the spec against the registries (:func:`validate_spec`), prepares the context (data, naming any
offline stand-in; the disjoint split; the recipe, see :mod:`mcmia_helpers.context`), trains the
target through its defence (or loads it from the cache), measures utility, runs the attacks and
returns a record that says what ran, on what data, at what scale, and with what results
(``calibration``: on which shadow models the attacks' thresholds were calibrated, see
:mod:`mcmia_helpers.attacks.shadows`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from mcmia_helpers.attacks import run_attacks, validate_attack_names
from mcmia_helpers.attacks.shadows import calibration_of, check_calibration
from mcmia_helpers.context import ExperimentSpec, TargetContext, prepare
from mcmia_helpers.data import MIASplit, augmentation_recipe
from mcmia_helpers.defences import DEFENSES
from mcmia_helpers.defences.pruning import check_pruning_arch
from mcmia_helpers.defences.registry import canonical_params
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import count_parameters
from mcmia_helpers.scales import get_scale
from mcmia_helpers.training import predict_logits
from mcmia_helpers.version import __version__


def validate_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """Check ``spec`` whole (one-line UserError): architecture, seed and scale, then the defence
    and its parameters against :mod:`mcmia_helpers.defences`, and the attack names. In place,
    the parameters become canonical (:func:`~mcmia_helpers.defences.registry.canonical_params`:
    defaults filled in, numbers typed, so every spelling is one cache key and one record) and
    the attack names a tuple. The calibration is None or one of
    :data:`~mcmia_helpers.attacks.shadows.CALIBRATIONS`. Returns ``spec``."""
    spec.validate()
    check_calibration(spec.calibration)
    spec.params = canonical_params(spec.defense, spec.params)
    check_pruning_arch(spec.params, spec.arch)  # the architectures filter pruning can shrink
    if spec.attacks is not None:
        spec.attacks = validate_attack_names(spec.attacks)
    return spec


def spec_identity(spec: ExperimentSpec) -> dict[str, Any]:
    """What else tells two experiments apart besides architecture, data, scale, defence,
    parameters and seed: the ImageNet form (``px``, ``classes``) for ImageNet data, an
    explicit augmentation choice (``augment``; ``None`` follows the scale and is left out) and
    an explicit calibration (``calibration``; ``None``, the default, is left out, so the ids of
    cells that do not choose stay what they were). Recorded as ``identity`` and part of a grid
    cell's id."""
    out: dict[str, Any] = {}
    if "imagenet" in (spec.dataset, spec.standin):
        out["px"] = int(spec.imagenet_size)
        if spec.imagenet_classes is not None:
            out["classes"] = int(spec.imagenet_classes)
    if spec.augment is not None:
        out["augment"] = bool(spec.augment)
    if spec.calibration is not None:
        out["calibration"] = spec.calibration
    return out


def utility(model: nn.Module, ctx: TargetContext) -> dict[str, float]:
    """Accuracy on members, non-members and the test set, and the generalisation gap."""
    out = {}
    for name, idx in (("member", ctx.split.members), ("nonmember", ctx.split.nonmembers),
                      ("test", ctx.split.test)):
        logits = predict_logits(model, ctx.bundle, idx, device=ctx.device)
        out[f"{name}_acc"] = float((logits.argmax(1) == ctx.bundle.labels[idx]).float().mean())
    out["generalization_gap"] = out["member_acc"] - out["test_acc"]
    return out


def split_digest(split: MIASplit) -> str:
    """A short hash of the split's indices, so two records can be checked to share one split."""
    return hashlib.sha256(json.dumps(split.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def run_experiment(spec: ExperimentSpec, *, progress: bool = False,
                   split_path: str | os.PathLike | None = None,
                   save_scores: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run ``spec`` end to end and return its JSON-able record (see the module docstring)."""
    started = time.perf_counter()
    validate_spec(spec)
    ctx = prepare(spec, progress)
    if split_path is not None:
        ctx.split.save(split_path)
    model, extra = DEFENSES[spec.defense](ctx)
    model.to(ctx.device)
    total, nonzero = count_parameters(model)
    history = extra.pop("history", [])
    record: dict[str, Any] = {
        "arch": spec.arch,
        "dataset_requested": spec.dataset,
        "dataset_used": ctx.bundle.name_used,
        "dataset_standin": ctx.bundle.is_standin,
        "dataset_view": ctx.bundle.view,
        "dataset_description": ctx.bundle.describe(),
        "scale": spec.scale,
        "seed": spec.seed,
        "defense": spec.defense,
        "params": dict(spec.params),
        "width": ctx.arch_scale.width,
        "train_config": ctx.train_config.to_dict(),
        "split_sizes": ctx.split.sizes(),
        "split_digest": split_digest(ctx.split),
        "train_acc": float(history[-1]["acc"]) if history else None,
        "train_loss": float(history[-1]["loss"]) if history else None,
        **utility(model, ctx),
        "params_total": total,
        "params_nonzero": nonzero,
        "device": ctx.device.type,
        "package_version": __version__,
        "torch_version": torch.__version__,
        # CPU float reductions depend on the thread count: same seed + same threads = same numbers.
        "torch_threads": torch.get_num_threads(),
    }
    record.update(extra)
    # The recipe that actually trained the target (DP-SGD trains without augmentation).
    record["augmentation"] = augmentation_recipe(ctx.bundle.image_size,
                                                 bool(record["train_config"].get("augment")))
    record["dataset_source"] = dict(ctx.bundle.source)
    record["identity"] = spec_identity(spec)
    record["calibration"] = calibration_of(spec)
    scale = get_scale(spec.scale)
    record["smoke_cap"] = scale.smoke.to_dict() if scale.smoke else None
    record["attacks"] = run_attacks(ctx, model, spec.attacks, save_scores=save_scores)
    record["history"] = history
    record["wall_time_s"] = round(time.perf_counter() - started, 3)
    return record


def spec_from_dict(d: dict[str, Any]) -> ExperimentSpec:
    """An :class:`ExperimentSpec` from a plain dict (a grid cell, a JSON file)."""
    known = {f for f in ExperimentSpec.__dataclass_fields__}
    unknown = set(d) - known
    if unknown:
        raise UserError(f"unknown experiment keys {sorted(unknown)}: use {sorted(known)}")
    return ExperimentSpec(**d)


def spec_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """The plain dict of ``spec`` (inverse of :func:`spec_from_dict`)."""
    return asdict(spec)
