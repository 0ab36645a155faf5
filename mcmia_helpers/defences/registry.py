"""The defence registry: name -> trainer, the parameters it takes, and their validator.

A *trainer* takes a :class:`~mcmia_helpers.context.TargetContext` and returns the trained
(defended) target and extra record fields. ``run_experiment``, the grid, the command line and the
defence-aware attacks (:mod:`mcmia_helpers.attacks.shadows`) all look defences up here, so a new
defence is one :func:`register_defense` call in :mod:`mcmia_helpers.defences`. The baseline
``none`` (plain training, chapter 0) is registered here; pruning (chapter 2), the Min-Max game
(chapter 3) and DP-SGD (chapter 4) register themselves in the package's ``__init__``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from mcmia_helpers.context import TargetContext
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import fit, load_or_train

#: A defence's trainer, which returns the trained model and extra fields for the record.
Trainer = Callable[[TargetContext], tuple[nn.Module, dict[str, Any]]]


def train_undefended(ctx: TargetContext) -> tuple[nn.Module, dict[str, Any]]:
    """The baseline (``none``): plain training of the target on its members, load-or-train."""
    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        return fit(model, ctx.bundle, ctx.split.members, ctx.train_config, device=ctx.device,
                   progress=ctx.progress, checkpoint_path=checkpoint)

    model, info = load_or_train(ctx.cache_config(), ctx.build, train)
    return model, {"history": info["history"], "cached": info["cached"]}


#: Defence name -> trainer(ctx) -> (trained model, extra record fields).
DEFENSES: dict[str, Trainer] = {"none": train_undefended}
#: The parameters each defence accepts (the command line's flags are these names with dashes).
DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {"none": ()}
#: Defence name -> function that checks its parameters (one-line UserError on a bad value).
PARAM_VALIDATORS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_defense(name: str, trainer: Trainer, params: tuple[str, ...],
                     validate: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Make a defence available to ``run_experiment``, the grid and the command line."""
    DEFENSES[name] = trainer
    DEFENSE_PARAMS[name] = params
    if validate is not None:
        PARAM_VALIDATORS[name] = validate


def check_defense_name(defense: str) -> None:
    """A one-line :class:`UserError` unless ``defense`` is registered."""
    if defense not in DEFENSES:
        raise UserError(f"unknown defense '{defense}': choose one of {', '.join(DEFENSES)}")


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
