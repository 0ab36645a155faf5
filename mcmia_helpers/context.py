"""The experiment context: what a defence's trainer needs, and nothing about attacks or defences.

An :class:`ExperimentSpec` says what to run (architecture, data, defence name and parameters,
scale, seed); :func:`prepare` turns it into a :class:`TargetContext`: the loaded data (naming
any offline stand-in), the disjoint member/non-member split, the training recipe of the scale
(optimiser, schedule and data augmentation: :attr:`ExperimentSpec.augment` or the scale's)
and the device. :func:`shadow_context` gives the same recipe on other members, which is how a
defence-aware attacker trains its shadow models. The context knows no attack and no defence:
checking a spec's defence and attack names is the job of :mod:`mcmia_helpers.experiments`,
which sits above both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn as nn

from mcmia_helpers.data import (DatasetBundle, MIASplit, augmentation_recipe, load_dataset,
                                make_split)
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import ARCHITECTURES, build_model
from mcmia_helpers.scales import ArchScale, get_scale, split_sizes
from mcmia_helpers.training import TrainConfig, get_device


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
    #: Data augmentation while training. ``None`` follows the scale's recipe (on at ``paper`` for
    #: the 32x32 and ImageNet forms), ``True``/``False`` choose (never on for LeNet-5's digits).
    augment: bool | None = None
    #: Shadow models that calibrate the metric attacks' thresholds and train the shadow attack
    #: networks: ``"target"`` (trained with the target's defence), ``"undefended"`` (without it),
    #: ``None`` for the default, ``"target"`` (see :mod:`mcmia_helpers.attacks.shadows`).
    calibration: str | None = None

    def validate(self) -> None:
        """Check what the context itself needs (architecture, seed, scale); one-line UserError.

        The defence's name and parameters and the attack names are checked by
        :func:`mcmia_helpers.experiments.validate_spec`, which knows the registries.
        """
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture '{self.arch}': choose one of {', '.join(ARCHITECTURES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed {self.seed!r} is not a non-negative integer: use e.g. --seed 0")
        get_scale(self.scale)
        if self.augment is not None and not isinstance(self.augment, bool):
            raise UserError(f"augment {self.augment!r} is not true or false: use augment: true, "
                            "false, or leave it out for the scale's recipe")
        if self.augment and self.arch == "lenet5":
            raise UserError("augmentation (random crop + flip) is for the 32x32 and ImageNet "
                            "forms: LeNet-5 trains on digits without it (drop augment)")


#: The ``role`` entry of a defence-aware shadow model's cache key (see :func:`shadow_context`).
SHADOW_ROLE = "defence-aware shadow"


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

    @property
    def is_shadow(self) -> bool:
        """Whether this context trains an attacker's defence-aware shadow model
        (:func:`shadow_context`) rather than a target: such a model's record is never shown, so
        its trainer may skip what only a record needs (a pruned model's file sizes)."""
        return self.cache_extra.get("role") == SHADOW_ROLE

    def build(self, dp_compatible: bool = False) -> nn.Module:
        """A fresh, seeded model of the experiment's architecture for this data."""
        torch.manual_seed(self.spec.seed)
        return build_model(self.spec.arch, num_classes=self.bundle.num_classes,
                           in_channels=self.bundle.in_channels, image_size=self.bundle.image_size,
                           width=self.arch_scale.width, dp_compatible=dp_compatible)

    def augmentation(self) -> str:
        """The training augmentation in words (``"none"`` when off), for records and keys."""
        return augmentation_recipe(self.bundle.image_size, self.train_config.augment)

    def data_identity(self) -> dict[str, Any]:
        """What identifies the data and its recipe in a cache key beyond name and view: the
        augmentation when it is on, the ImageNet tree's digest, size and classes. Empty for the
        un-augmented torchvision datasets, so their keys are what they were."""
        out: dict[str, Any] = dict(self.bundle.source)
        if self.train_config.augment:
            out["augmentation"] = self.augmentation()
        return out

    def cache_config(self, **extra: Any) -> dict[str, Any]:
        """The full configuration that identifies a trained target in the cache."""
        return {"arch": self.spec.arch, "dataset": self.bundle.name_used, "view": self.bundle.view,
                "width": self.arch_scale.width, "split_seed": self.split.seed,
                "split_sizes": self.split.sizes(), "train": self.train_config.to_dict(),
                "defense": self.spec.defense, "params": self.spec.params, **self.data_identity(),
                **self.cache_extra, **extra}


def arch_view(arch: str, bundle: DatasetBundle) -> DatasetBundle:
    """The view of ``bundle`` that ``arch`` runs on: CIFAR architectures need 32x32 RGB."""
    if arch != "lenet5" and bundle.image_size < 32:
        return bundle.as_view(32, 3)
    return bundle


def prepare(spec: ExperimentSpec, progress: bool = False) -> TargetContext:
    """Load data, draw the split and fix the training configuration for ``spec``."""
    spec.validate()
    arch_scale = get_scale(spec.scale).for_arch(spec.arch)
    wanted = split_sizes(arch_scale.n_members)
    bundle = load_dataset(spec.dataset, standin=spec.standin, imagenet_root=spec.imagenet_root,
                          imagenet_size=spec.imagenet_size, imagenet_classes=spec.imagenet_classes,
                          needs=wanted.total)
    bundle = arch_view(spec.arch, bundle)
    sizes = wanted.fit_to(len(bundle))  # a subset too small stopped above; shrinks toy data only
    split = make_split(len(bundle), sizes, seed=spec.seed, dataset=bundle.name_used)
    augment = arch_scale.augment if spec.augment is None else spec.augment
    config = TrainConfig(epochs=arch_scale.epochs, batch_size=arch_scale.batch_size,
                         optimizer=arch_scale.optimizer, lr=arch_scale.lr,
                         weight_decay=arch_scale.weight_decay, schedule=arch_scale.schedule,
                         augment=bool(augment and spec.arch != "lenet5"), seed=spec.seed)
    return TargetContext(spec, arch_scale, bundle, split, config, get_device(), progress)


def shadow_context(ctx: TargetContext, members: torch.Tensor, seed: int) -> TargetContext:
    """The target's whole recipe on other members: what a defence-aware attacker trains.

    Same data, architecture, training configuration, defence and defence parameters as ``ctx``;
    only the training members and the seed (initialisation and data order) change. Trained
    models are cached under a key that adds a hash of ``members``, so they never collide with
    the target or with each other.

    The shadow model's split keeps the target's reference and test sets (the Min-Max defender's
    data and the utility measure) but no non-members and no shadow pool: those are the target's
    evaluation and attacker sets, from which the shadow's own members are drawn, so keeping
    them would make the shadow's split overlap itself (and the Min-Max game rejects a split
    whose parts overlap).
    """
    members = torch.as_tensor(members, dtype=torch.long)
    digest = hashlib.sha256(members.cpu().numpy().tobytes()).hexdigest()[:16]
    empty = torch.empty(0, dtype=torch.long)
    split = replace(ctx.split, members=members, nonmembers=empty, shadow_pool=empty)
    return replace(ctx, spec=replace(ctx.spec, seed=int(seed)), split=split,
                   train_config=replace(ctx.train_config, seed=int(seed)),
                   cache_extra={**ctx.cache_extra, "role": SHADOW_ROLE, "members_sha256": digest})
