"""The three scales of every experiment, in one place.

``MCMIA_SCALE`` picks one:

``ci``     every notebook in one to three minutes on a 2-core CPU: the tests run at this scale;
``book``   all notebooks together in about half an hour on a 2-core CPU: the committed outputs;
``paper``  the paper's sizes (full widths, ~10k members, long training): for a GPU.

A scale fixes, per architecture, how many members the target trains on, for how many epochs,
at which width, and how many shadow models the attacks may train. Split sizes follow from the
member count (see :func:`split_sizes`), so every chapter and the command line agree.
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scale:
    """One named scale: an :class:`ArchScale` per architecture."""

    name: str
    archs: dict[str, ArchScale] = field(default_factory=dict)

    def for_arch(self, arch: str) -> ArchScale:
        """The sizes for ``arch`` at this scale."""
        if arch not in self.archs:
            raise UserError(f"unknown architecture '{arch}': choose one of {', '.join(self.archs)}")
        return self.archs[arch]


_SGD = dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine")

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
                           n_lira_models=64, **_SGD),
        "mobilenetv2": ArchScale(n_members=10000, epochs=100, width=1.0, batch_size=128, n_shadow_models=4,
                                 n_lira_models=64, **_SGD),
        "resnet18": ArchScale(n_members=10000, epochs=100, width=1.0, batch_size=128, n_shadow_models=4,
                              n_lira_models=64, **_SGD),
    },
}


def get_scale(name: str | None = None) -> Scale:
    """The scale called ``name``, or the one in ``MCMIA_SCALE`` (default ``ci``)."""
    name = name or os.environ.get("MCMIA_SCALE", "ci")
    if name not in _TABLE:
        raise UserError(f"unknown scale '{name}': set MCMIA_SCALE or --scale to one of {', '.join(SCALES)}")
    return Scale(name=name, archs=dict(_TABLE[name]))


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
