"""The defence registry: name -> trainer, the parameters it takes, and their validator.

A *trainer* takes a :class:`~mcmia_helpers.context.TargetContext` and returns the trained
(defended) target and extra record fields. ``run_experiment``, the grid, the command line and the
defence-aware attacks (:mod:`mcmia_helpers.attacks.shadows`) all look defences up here, so a new
defence is one :func:`register_defense` call in :mod:`mcmia_helpers.defences`. The baseline
``none`` (plain training, chapter 0) is registered here; pruning (chapter 2), the Min-Max game
(chapter 3) and DP-SGD (chapter 4) register themselves in the package's ``__init__``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

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
#: Defence name -> function that checks its parameters (one-line UserError on a bad value) and
#: returns them with the defence's defaults filled in.
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


def validate_defense_params(defense: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Reject parameters the defence does not take, check every value against its bounds
    (:data:`PARAM_SCHEMAS`), then let the defence check the values. Returns the parameters with
    the defence's defaults filled in (what its validator returns)."""
    check_params(params)
    allowed = DEFENSE_PARAMS.get(defense, ())
    for key in params:
        if key not in allowed:
            flag = "--" + key.replace("_", "-")
            takes = ", ".join(d for d, ps in DEFENSE_PARAMS.items() if key in ps) or "no defence"
            raise UserError(f"{flag} does not apply to --defense {defense}: it is a parameter of {takes}")
    if defense not in PARAM_VALIDATORS:
        return dict(params)
    return dict(PARAM_VALIDATORS[defense](dict(params)))


# --------------------------------------------------------------------------- parameters

#: JSON schema of each known defence parameter's value (the bounds are inclusive unless named
#: exclusive). The command line and the grid files are checked against the same schemas.
PARAM_SCHEMAS: dict[str, dict[str, Any]] = {
    "pruning": {"type": "string"},
    "sparsity": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "sparsity_spec": {"type": "string", "minLength": 1},
    "lam": {"type": "number", "minimum": 0, "maximum": 1000},
    "k_steps": {"type": "integer", "minimum": 1, "maximum": 100},
    "epsilon": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6},
    "delta": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "max_grad_norm": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
}
#: The schema of a parameter name not in :data:`PARAM_SCHEMAS` (its defence checks it).
ANY_PARAM_SCHEMA = {"type": ["number", "string"]}


def _describe_bounds(schema: Mapping[str, Any]) -> str:
    low = (f"> {schema['exclusiveMinimum']:g}" if "exclusiveMinimum" in schema
           else f">= {schema['minimum']:g}" if "minimum" in schema else "")
    high = (f"< {schema['exclusiveMaximum']:g}" if "exclusiveMaximum" in schema
            else f"<= {schema['maximum']:g}" if "maximum" in schema else "")
    kind = "an integer" if schema.get("type") == "integer" else "a finite number"
    return f"{kind} {' and '.join(b for b in (low, high) if b)}".strip()


def check_param_value(name: str, value: Any) -> None:
    """Check one defence parameter against :data:`PARAM_SCHEMAS` (NaN and infinities are never
    accepted): a one-line :class:`UserError` that names the flag and the allowed range."""
    import jsonschema

    schema = PARAM_SCHEMAS.get(name, ANY_PARAM_SCHEMA)
    flag = "--" + name.replace("_", "-")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag} {value} is not finite: use {_describe_bounds(schema)}")
    if isinstance(value, bool) or not jsonschema.Draft202012Validator(schema).is_valid(value):
        if schema.get("type") in ("number", "integer"):
            raise UserError(f"{flag} {value!r} is out of range: use {_describe_bounds(schema)}")
        raise UserError(f"{flag} {value!r} is not valid: use a {schema['type']}")


def check_params(params: Mapping[str, Any]) -> None:
    """:func:`check_param_value` for every given (not ``None``) parameter."""
    for name, value in params.items():
        if value is not None:
            check_param_value(name, value)


def canonical_params(defense: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The one spelling of a defence's parameters: checked, defaults filled in, numbers typed.

    ``--epsilon 4``, a grid's ``epsilon: 4`` and no epsilon at all are the same experiment; this
    function makes them the same value (``{"epsilon": 4.0, "max_grad_norm": 1.0}``) before they
    enter a cell id, a record or (as ``ExperimentSpec.params``) a cache key. The command line,
    the grid and :func:`~mcmia_helpers.experiments.validate_spec` call it. Values come from the
    defence's own validator in this registry, which fills in defaults and casts numbers.
    ``None`` values mean "derived later" (DP's ``delta``) and are left out.
    Bad names or values are one-line :class:`UserError` messages.
    """
    check_defense_name(defense)
    given = {k: v for k, v in params.items() if v is not None}
    filled = validate_defense_params(defense, given)
    allowed = DEFENSE_PARAMS.get(defense, ())
    return {k: filled[k] for k in sorted(filled) if k in allowed and filled[k] is not None}
