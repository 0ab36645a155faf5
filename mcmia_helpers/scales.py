"""The three scales of every experiment, in one place.

``MCMIA_SCALE`` picks one:

``ci``     every notebook in one to three minutes on a 2-core CPU: the tests run at this scale;
``book``   all notebooks together in about half an hour on a 2-core CPU: the committed outputs;
``paper``  the paper's sizes (full widths, ~10k members, long training): for a GPU.

A scale fixes, per architecture, how many members the target trains on, for how many epochs,
at which width, with which training recipe (optimiser, schedule, data augmentation), and how
many shadow models the attacks may train. Split sizes follow from the member count (see
:func:`split_sizes`), so every chapter and the command line agree.

``MCMIA_SMOKE=N`` caps any scale for a smoke run (see :class:`SmokeCap`): N batches of 8 per
epoch, one epoch, two shadow and two LiRA models, at the scale's own widths, optimiser, learning
rate, schedule and augmentation. It is how the ``paper`` grid is exercised end to end on a CPU; the
cap is in every record, and in every model's cache key through the member count and epochs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

from mcmia_helpers.errors import UserError

SCALES = ("ci", "book", "paper")


@dataclass(frozen=True)
class ArchScale:
    """Training sizes for one architecture at one scale."""

    n_members: int
    epochs: int
    width: float
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"
    n_shadow_models: int = 2
    n_lira_models: int = 8
    #: Random crop (padding ``image_size // 8``) and horizontal flip while training (see
    #: :func:`mcmia_helpers.data.augmentation_recipe`); never for LeNet-5's digits.
    augment: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scale:
    """One named scale: an :class:`ArchScale` per architecture."""

    name: str
    archs: dict[str, ArchScale] = field(default_factory=dict)
    #: The smoke cap applied to ``archs`` (``MCMIA_SMOKE``), or ``None`` for the real sizes.
    smoke: "SmokeCap | None" = None

    def for_arch(self, arch: str) -> ArchScale:
        """The sizes for ``arch`` at this scale."""
        if arch not in self.archs:
            raise UserError(f"unknown architecture '{arch}': choose one of {', '.join(self.archs)}")
        return self.archs[arch]


_SGD = dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine")
# The standard CIFAR/ImageNet recipe: SGD with a cosine schedule *and* random crop + flip.
_PAPER_RECIPE = dict(_SGD, augment=True)

_TABLE: dict[str, dict[str, ArchScale]] = {
    "ci": {
        "lenet5": ArchScale(n_members=500, epochs=30, width=1.0, batch_size=32, n_shadow_models=2,
                            n_lira_models=8),
        "vgg16": ArchScale(n_members=512, epochs=4, width=0.25, batch_size=32, n_shadow_models=1,
                           n_lira_models=2),
        "mobilenetv2": ArchScale(n_members=512, epochs=4, width=0.25, batch_size=32, n_shadow_models=1,
                                 n_lira_models=2),
        "resnet18": ArchScale(n_members=512, epochs=4, width=0.25, batch_size=32, n_shadow_models=1,
                              n_lira_models=2),
    },
    "book": {
        "lenet5": ArchScale(n_members=1000, epochs=30, width=1.0, batch_size=32, n_shadow_models=2,
                            n_lira_models=8),
        "vgg16": ArchScale(n_members=500, epochs=10, width=0.25, batch_size=32, n_shadow_models=1,
                           n_lira_models=4),
        "mobilenetv2": ArchScale(n_members=500, epochs=10, width=0.25, batch_size=32, n_shadow_models=1,
                                 n_lira_models=4),
        "resnet18": ArchScale(n_members=500, epochs=10, width=0.25, batch_size=32, n_shadow_models=1,
                              n_lira_models=4),
    },
    "paper": {
        "lenet5": ArchScale(n_members=10000, epochs=50, width=1.0, n_shadow_models=8, n_lira_models=64),
        "vgg16": ArchScale(n_members=10000, epochs=100, width=1.0, batch_size=128, n_shadow_models=4,
                           n_lira_models=64, **_PAPER_RECIPE),
        "mobilenetv2": ArchScale(n_members=10000, epochs=100, width=1.0, batch_size=128, n_shadow_models=4,
                                 n_lira_models=64, **_PAPER_RECIPE),
        "resnet18": ArchScale(n_members=10000, epochs=100, width=1.0, batch_size=128, n_shadow_models=4,
                              n_lira_models=64, **_PAPER_RECIPE),
    },
}


#: Environment variable that turns on the smoke cap (see :class:`SmokeCap`).
SMOKE_ENV = "MCMIA_SMOKE"


@dataclass(frozen=True)
class SmokeCap:
    """A hard cap on a scale's cost, for smoke runs of the ``paper`` grid on a CPU.

    Each architecture keeps its width, optimiser, learning rate, weight decay, schedule and
    augmentation (the recipe is what a smoke run checks), but trains with batches of at most
    ``batch_size`` on ``batches x batch_size`` members (so every epoch is ``batches`` steps,
    and every pool of the split is as small), for ``epochs`` epoch(s), with at most
    ``shadow_models`` shadow models (one calibrates thresholds and trains the attack networks;
    with a defence each goes through it, the costliest part of a smoke cell) and ``lira_models``
    LiRA models (two: LiRA needs an IN and an OUT model per example). ``MCMIA_SMOKE=N`` sets
    ``batches=N``. (A full-width ResNet18
    step on 128 images costs about 0.2 TFLOP: at the paper's batch size one smoke cell takes
    minutes on a 2-core CPU, at 8 seconds.)
    """

    batches: int = 2
    epochs: int = 1
    shadow_models: int = 1
    lira_models: int = 2
    batch_size: int = 8

    def apply(self, arch_scale: ArchScale) -> ArchScale:
        """``arch_scale`` under this cap."""
        batch = min(arch_scale.batch_size, self.batch_size)
        return replace(arch_scale, batch_size=batch,
                       n_members=min(arch_scale.n_members, self.batches * batch),
                       epochs=min(arch_scale.epochs, self.epochs),
                       n_shadow_models=min(arch_scale.n_shadow_models, self.shadow_models),
                       n_lira_models=min(arch_scale.n_lira_models, self.lira_models))

    def to_dict(self) -> dict:
        return asdict(self)


def smoke_cap() -> SmokeCap | None:
    """The cap that ``MCMIA_SMOKE`` asks for (a positive number of batches per epoch), or ``None``
    when it is unset, empty or ``0``; anything else is a one-line :class:`UserError`."""
    text = os.environ.get(SMOKE_ENV, "").strip()
    if text in ("", "0"):
        return None
    # ASCII digits only: str.isdigit() also accepts "²" or "١", which int() refuses or reads.
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise UserError(f"{SMOKE_ENV}={text!r} is not a number of batches per epoch in [1, 1000]: "
                        f"use e.g. {SMOKE_ENV}=2 (or unset it for the real sizes)")
    return SmokeCap(batches=int(text))


def get_scale(name: str | None = None) -> Scale:
    """The scale called ``name``, or the one in ``MCMIA_SCALE`` (default ``ci``), capped by
    ``MCMIA_SMOKE`` when that is set (see :class:`SmokeCap`)."""
    name = name or os.environ.get("MCMIA_SCALE", "ci")
    if name not in _TABLE:
        raise UserError(f"unknown scale '{name}': set MCMIA_SCALE or --scale to one of {', '.join(SCALES)}")
    cap = smoke_cap()
    archs = dict(_TABLE[name]) if cap is None else {a: cap.apply(s) for a, s in _TABLE[name].items()}
    return Scale(name=name, archs=archs, smoke=cap)


@dataclass(frozen=True)
class SplitSizes:
    """How many examples each disjoint part of a membership-inference split holds.

    ``members`` train the target; ``nonmembers`` (same size) are the target's unseen examples
    that the attack must tell apart; ``shadow_pool`` is the attacker's own data (twice the
    members, so a shadow model can train on one half and hold out the other); ``reference`` is
    the defender's Min-Max reference set; ``test`` measures utility.
    """

    members: int
    nonmembers: int
    shadow_pool: int
    reference: int
    test: int

    @property
    def total(self) -> int:
        return self.members + self.nonmembers + self.shadow_pool + self.reference + self.test

    def fit_to(self, n_available: int) -> "SplitSizes":
        """Shrink every part by the same factor so the split fits ``n_available`` examples."""
        if self.total <= n_available:
            return self
        factor = n_available / self.total
        shrunk = {k: max(1, int(v * factor)) for k, v in asdict(self).items()}
        shrunk["nonmembers"] = shrunk["members"]
        return replace(self, **shrunk)

    def to_dict(self) -> dict:
        return asdict(self)


def split_sizes(n_members: int) -> SplitSizes:
    """The split sizes that go with a target trained on ``n_members`` examples."""
    return SplitSizes(members=n_members, nonmembers=n_members, shadow_pool=2 * n_members,
                      reference=n_members, test=n_members)


# --------------------------------------------------------------------------- model zoos


@dataclass(frozen=True)
class ZooScale:
    """Sizes of a model zoo (:mod:`mcmia_helpers.zoo`) for one architecture at one scale.

    ``n_models`` models, each trained on half of a candidate ``pool`` (so ``pool / 2`` members
    and as many non-members per target), of which ``canaries`` are mislabelled on purpose;
    ``test`` held-out examples measure utility and ``reference`` examples are the Min-Max
    defender's own data (both disjoint from the pool). ``epochs`` overrides the architecture's
    epochs at this scale (``None``: keep them). ``models_by_defense`` lowers ``n_models`` for the
    defences that train one model at a time (Min-Max, DP-SGD): a smaller zoo of a defence uses
    the first rows of the dense zoo's membership matrix, so it stays paired with it.
    """

    n_models: int
    pool: int
    canaries: int = 0
    epochs: int | None = None
    test: int = 1000
    reference: int = 500
    width: float | None = None
    models_by_defense: tuple[tuple[str, int], ...] = ()

    def models_for(self, defense: str) -> int:
        """How many models the zoo of ``defense`` has at this scale."""
        return dict(self.models_by_defense).get(defense, self.n_models)

    @property
    def members_per_model(self) -> int:
        """How many examples each model of the zoo trains on (half of the ``pool``)."""
        return self.pool // 2

    def to_dict(self) -> dict:
        return asdict(self)


# Min-Max and DP-SGD train one model at a time (measured on the 2 shared cores at load ~4, book
# scale, MNIST: 64 s per Min-Max model, 30 s per DP-SGD model). Their zoos have 16 models, the
# fewest that give an interval: 8 pairs of targets (evidence.MIN_PAIRS).
_ONE_AT_A_TIME = (("minmax", 16), ("prune+minmax", 16), ("dp", 16))

_ZOO_TABLE: dict[str, dict[str, ZooScale]] = {
    # ci: the tests' zoo, seconds on 2 cores; overfits (20 epochs on 500 members), so it leaks.
    "ci": {
        "lenet5": ZooScale(n_models=8, pool=1000, canaries=100, epochs=20, test=500, reference=250,
                           models_by_defense=(("minmax", 4), ("prune+minmax", 4), ("dp", 4))),
        **{arch: ZooScale(n_models=4, pool=256, canaries=0, epochs=2, test=256, reference=128)
           for arch in ("vgg16", "mobilenetv2", "resnet18")},
    },
    # book: sized to a 2-core CPU (see the zoo chapter's measured times); 32 x 2,000 non-member
    # scores = 64,000 pooled non-member scores per LeNet-5 zoo.
    "book": {
        "lenet5": ZooScale(n_models=32, pool=4000, canaries=200, epochs=30, test=2000,
                           reference=1000, models_by_defense=_ONE_AT_A_TIME),
        **{arch: ZooScale(n_models=16, pool=1000, canaries=0, epochs=10, test=1000, reference=500,
                          width=0.25, models_by_defense=(("minmax", 8), ("prune+minmax", 8), ("dp", 8)))
           for arch in ("vgg16", "mobilenetv2", "resnet18")},
    },
    # paper: 64+ models on full pools, for a GPU.
    "paper": {
        "lenet5": ZooScale(n_models=64, pool=40000, canaries=500, epochs=50, test=10000,
                           reference=10000, models_by_defense=(("dp", 32),)),
        **{arch: ZooScale(n_models=64, pool=40000, canaries=500, epochs=100, test=10000,
                          reference=5000, width=1.0, models_by_defense=(("dp", 32),))
           for arch in ("vgg16", "mobilenetv2", "resnet18")},
    },
}


def zoo_scale(scale: str, arch: str) -> ZooScale:
    """The zoo sizes of ``arch`` at ``scale`` (one-line UserError for an unknown name)."""
    if scale not in _ZOO_TABLE:
        raise UserError(f"unknown scale '{scale}': use --scale {', '.join(SCALES)}")
    if arch not in _ZOO_TABLE[scale]:
        raise UserError(f"no zoo sizes for architecture '{arch}': choose one of {', '.join(_ZOO_TABLE[scale])}")
    return _ZOO_TABLE[scale][arch]
