"""One experiment = one target model, one defence, its attacks, and one JSON record.

:func:`run_experiment` is what ``python -m mcmia_helpers run`` and the notebooks call: it loads
the data (naming any offline stand-in), draws the disjoint split, trains the target (or loads it
from the cache), measures utility, and returns a record that says what ran, on what data, at
what scale, and with what results. Defences register a trainer in :data:`DEFENSES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

import mcmia_helpers
from mcmia_helpers.attacks import run_attacks, validate_attack_names
from mcmia_helpers.data import DatasetBundle, MIASplit, load_dataset, make_split
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import ARCHITECTURES, build_model, count_parameters
from mcmia_helpers.scales import ArchScale, get_scale, split_sizes
from mcmia_helpers.training import TrainConfig, fit, get_device, load_or_train, predict_logits

#: The dataset each architecture is run on in the paper, and this book's offline stand-in.
PAPER_DATASETS = {"lenet5": "mnist", "vgg16": "cifar10", "mobilenetv2": "cifar10", "resnet18": "cifar10"}
OFFLINE_STANDIN = "fashion-mnist"


@dataclass
class ExperimentSpec:
    """What to run: architecture, data, defence (with its parameters), scale and seed."""

    arch: str
    dataset: str
    defense: str = "none"
    scale: str = "ci"
    seed: int = 0
    standin: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    imagenet_root: str | None = None
    imagenet_size: int = 64
    imagenet_classes: int | None = 100
    attacks: tuple[str, ...] | None = None

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture '{self.arch}': choose one of {', '.join(ARCHITECTURES)}")
        if self.defense not in DEFENSES:
            raise UserError(f"unknown defense '{self.defense}': choose one of {', '.join(DEFENSES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed {self.seed!r} is not a non-negative integer: use e.g. --seed 0")
        get_scale(self.scale)
        validate_defense_params(self.defense, self.params)
        if self.attacks is not None:
            self.attacks = validate_attack_names(self.attacks)


@dataclass
class TargetContext:
    """Everything a defence's trainer needs to train the target model."""

    spec: ExperimentSpec
    arch_scale: ArchScale
    bundle: DatasetBundle
    split: MIASplit
    train_config: TrainConfig
    device: torch.device
    progress: bool = False
    #: Extra entries of the cache key (a defence-aware shadow model's members, see
    #: :func:`shadow_context`); empty for a target, so targets keep their keys.
    cache_extra: dict[str, Any] = field(default_factory=dict)

    def build(self, dp_compatible: bool = False) -> nn.Module:
        """A fresh, seeded model of the experiment's architecture for this data."""
        torch.manual_seed(self.spec.seed)
        return build_model(self.spec.arch, num_classes=self.bundle.num_classes,
                           in_channels=self.bundle.in_channels, image_size=self.bundle.image_size,
                           width=self.arch_scale.width, dp_compatible=dp_compatible)

    def cache_config(self, **extra: Any) -> dict[str, Any]:
        """The full configuration that identifies a trained target in the cache."""
        return {"arch": self.spec.arch, "dataset": self.bundle.name_used, "view": self.bundle.view,
                "width": self.arch_scale.width, "split_seed": self.split.seed,
                "split_sizes": self.split.sizes(), "train": self.train_config.to_dict(),
                "defense": self.spec.defense, "params": self.spec.params, **self.cache_extra, **extra}


def _train_undefended(ctx: TargetContext) -> tuple[nn.Module, dict[str, Any]]:
    """The baseline: plain training of the target on its members."""
    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        return fit(model, ctx.bundle, ctx.split.members, ctx.train_config, device=ctx.device,
                   progress=ctx.progress, checkpoint_path=checkpoint)

    model, info = load_or_train(ctx.cache_config(), ctx.build, train)
    return model, {"history": info["history"], "cached": info["cached"]}


#: Defence name -> trainer(ctx) -> (trained model, extra record fields). Later chapters add more.
DEFENSES: dict[str, Callable[[TargetContext], tuple[nn.Module, dict[str, Any]]]] = {
    "none": _train_undefended,
}


#: The parameters each defence accepts (the command line's flags are these names with dashes).
DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {"none": ()}
#: Defence name -> function that checks its parameters (one-line UserError on a bad value).
PARAM_VALIDATORS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_defense(name: str, trainer: Callable[[TargetContext], tuple[nn.Module, dict[str, Any]]],
                     params: tuple[str, ...], validate: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Make a defence available to ``run_experiment``, the grid and the command line."""
    DEFENSES[name] = trainer
    DEFENSE_PARAMS[name] = params
    if validate is not None:
        PARAM_VALIDATORS[name] = validate


def validate_defense_params(defense: str, params: dict[str, Any]) -> None:
    """Reject parameters the defence does not take, then let the defence check the values."""
    allowed = DEFENSE_PARAMS.get(defense, ())
    for key in params:
        if key not in allowed:
            flag = "--" + key.replace("_", "-")
            takes = ", ".join(d for d, ps in DEFENSE_PARAMS.items() if key in ps) or "no defence"
            raise UserError(f"{flag} does not apply to --defense {defense}: it is a parameter of {takes}")
    if defense in PARAM_VALIDATORS:
        PARAM_VALIDATORS[defense](dict(params))


def arch_view(arch: str, bundle: DatasetBundle) -> DatasetBundle:
    """The view of ``bundle`` that ``arch`` runs on: CIFAR architectures need 32x32 RGB."""
    if arch != "lenet5" and bundle.image_size < 32:
        return bundle.as_view(32, 3)
    return bundle


def prepare(spec: ExperimentSpec, progress: bool = False) -> TargetContext:
    """Load data, draw the split and fix the training configuration for ``spec``."""
    spec.validate()
    arch_scale = get_scale(spec.scale).for_arch(spec.arch)
    bundle = load_dataset(spec.dataset, standin=spec.standin, imagenet_root=spec.imagenet_root,
                          imagenet_size=spec.imagenet_size, imagenet_classes=spec.imagenet_classes)
    bundle = arch_view(spec.arch, bundle)
    sizes = split_sizes(arch_scale.n_members).fit_to(len(bundle))
    split = make_split(len(bundle), sizes, seed=spec.seed, dataset=bundle.name_used)
    config = TrainConfig(epochs=arch_scale.epochs, batch_size=arch_scale.batch_size,
                         optimizer=arch_scale.optimizer, lr=arch_scale.lr,
                         weight_decay=arch_scale.weight_decay, schedule=arch_scale.schedule,
                         seed=spec.seed)
    return TargetContext(spec, arch_scale, bundle, split, config, get_device(), progress)


def shadow_context(ctx: TargetContext, members: torch.Tensor, seed: int) -> TargetContext:
    """The target's whole recipe on other members: what a defence-aware attacker trains.

    Same data, architecture, training configuration, defence and defence parameters as ``ctx``;
    only the training members and the seed (initialisation and data order) change. Trained
    models are cached under a key that adds a hash of ``members``, so they never collide with
    the target or with each other.
    """
    members = torch.as_tensor(members, dtype=torch.long)
    digest = hashlib.sha256(members.cpu().numpy().tobytes()).hexdigest()[:16]
    return replace(ctx, spec=replace(ctx.spec, seed=int(seed)), split=replace(ctx.split, members=members),
                   train_config=replace(ctx.train_config, seed=int(seed)),
                   cache_extra={**ctx.cache_extra, "role": "defence-aware shadow", "members_sha256": digest})


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
        "package_version": mcmia_helpers.__version__,
        "torch_version": torch.__version__,
        # CPU float reductions depend on the thread count: same seed + same threads = same numbers.
        "torch_threads": torch.get_num_threads(),
    }
    record.update(extra)
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
    return asdict(spec)


from mcmia_helpers import defences as _defences  # noqa: E402  (the defences are registered here)
from mcmia_helpers import privacy as _privacy  # noqa: E402
from mcmia_helpers import pruning as _pruning  # noqa: E402

_PRUNE_PARAMS = ("pruning", "sparsity", "sparsity_spec")
_MINMAX_PARAMS = ("lam", "k_steps")
_DP_PARAMS = ("epsilon", "delta", "max_grad_norm")
register_defense("prune", _pruning.train_pruned, _PRUNE_PARAMS, _pruning.validate_pruning_params)
register_defense("minmax", _defences.train_minmax, _MINMAX_PARAMS, _defences.validate_minmax_params)
register_defense("prune+minmax", _defences.train_prune_minmax, _PRUNE_PARAMS + _MINMAX_PARAMS,
                 lambda p: (_pruning.validate_pruning_params({k: v for k, v in p.items() if k in _PRUNE_PARAMS}),
                            _defences.validate_minmax_params({k: v for k, v in p.items() if k in _MINMAX_PARAMS})))
register_defense("dp", _privacy.train_dp_target, _DP_PARAMS, _privacy.validate_dp_params)
