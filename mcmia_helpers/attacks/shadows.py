"""The attacker's own models: which shadow and LiRA models it trains, on which members and seeds.

Plain shadow models are trained together on the batched engine (:mod:`mcmia_helpers.shadow`);
defence-aware ones go through the target's defence, which they get from the registry in
:mod:`mcmia_helpers.defences.registry` (a defence is not batchable).

The Shokri-style shadow models (:func:`shadow_model_specs`) calibrate the thresholds of the
metric attacks and train the shadow attack networks. Their :data:`CALIBRATIONS`: ``"target"``
(the default, :func:`calibration_of`) trains them with the target's defence, as an adaptive
attacker would, so that a threshold is placed where the defended model's scores are;
``"undefended"`` trains them without it (the batched plain models, the behaviour before issue
17), which misplaces the threshold against a pruned or DP target.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.context import ExperimentSpec, TargetContext, shadow_context
from mcmia_helpers.defences.registry import DEFENSES
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import ShadowSpec


#: Where the thresholds of the metric attacks and the shadow attack networks are calibrated, on
#: shadow models trained with the target's defence (``target``) or without it (``undefended``).
CALIBRATIONS = ("target", "undefended")


def check_calibration(value: object) -> None:
    """A one-line :class:`UserError` unless ``value`` is None (the default) or one of :data:`CALIBRATIONS`."""
    if value is not None and value not in CALIBRATIONS:
        raise UserError(f"unknown calibration {value!r}: choose one of {', '.join(CALIBRATIONS)} "
                        "(or leave it out for target)")


def calibration_of(spec: ExperimentSpec) -> str:
    """The calibration ``spec`` asks for: its explicit choice, else ``"target"`` (for defence
    ``none`` both train the same undefended models)."""
    check_calibration(spec.calibration)
    return spec.calibration or "target"


def defence_description(ctx: TargetContext) -> str:
    """The target's defence and its parameters in words, e.g. ``prune, pruning=admm, sparsity=0.9``."""
    return ctx.spec.defense + "".join(f", {k}={v}" for k, v in sorted(ctx.spec.params.items()))


def calibration_note(ctx: TargetContext, n_models: int, what: str) -> str:
    """Which shadow models ``what`` (e.g. "threshold calibrated") was done on, for a record's note."""
    if ctx.spec.defense == "none":
        how = "trained like the target (no defence)"
    elif calibration_of(ctx.spec) == "target":
        how = f"trained with the target's defence ({defence_description(ctx)})"
    else:
        how = f"trained without the target's defence ({defence_description(ctx)}): undefended calibration"
    return f"{what} on {n_models} shadow model{'s' if n_models != 1 else ''} {how}"


def attacker_builder(ctx: TargetContext) -> Callable[[], nn.Module]:
    """Builds untrained models of the target's architecture (no reseeding: the caller seeds)."""
    def build() -> nn.Module:
        return build_model(ctx.spec.arch, num_classes=ctx.bundle.num_classes,
                           in_channels=ctx.bundle.in_channels, image_size=ctx.bundle.image_size,
                           width=ctx.arch_scale.width)
    return build


def attacker_cache_config(ctx: TargetContext) -> dict[str, Any]:
    """What identifies the attacker's models in the cache besides their members, seeds and
    training configuration (the target's recipe, augmentation included: see
    :meth:`~mcmia_helpers.context.TargetContext.data_identity`)."""
    return {"arch": ctx.spec.arch, "dataset": ctx.bundle.name_used, "view": ctx.bundle.view,
            "width": ctx.arch_scale.width, "num_classes": ctx.bundle.num_classes,
            **ctx.data_identity()}


def attacker_seed(ctx: TargetContext, role: int) -> int:
    """A seed for one of the attacker's random choices, derived from the target's seed and a role."""
    return int(ctx.spec.seed) * 100_000 + role


def shadow_model_specs(ctx: TargetContext) -> tuple[list[ShadowSpec], torch.Tensor]:
    """Shokri-style shadow models: each trains on a random half of the shadow pool.

    Returns the specs and an ``(n_shadow, len(shadow_pool))`` IN matrix.
    """
    pool = ctx.split.shadow_pool
    n = ctx.arch_scale.n_shadow_models
    gen = torch.Generator().manual_seed(attacker_seed(ctx, 11))
    in_mask = torch.zeros(n, len(pool), dtype=torch.bool)
    specs = []
    for i in range(n):
        half = torch.randperm(len(pool), generator=gen)[:len(pool) // 2].sort().values
        in_mask[i, half] = True
        specs.append(ShadowSpec(pool[half], attacker_seed(ctx, 1000 + i)))
    return specs, in_mask


def lira_candidates(ctx: TargetContext) -> torch.Tensor:
    """LiRA's candidate set: members and non-members as one sorted index set (the attacker knows
    the candidates, not which are members)."""
    return torch.cat([ctx.split.members, ctx.split.nonmembers]).sort().values


def lira_model_specs(ctx: TargetContext) -> tuple[list[ShadowSpec], torch.Tensor]:
    """LiRA's shadow models: complementary random halves of the candidates (see
    :func:`~mcmia_helpers.attacks.lira.lira_in_out_sets`). Returns the specs and the ``(N, len(candidates))`` IN matrix."""
    candidates = lira_candidates(ctx)
    n = ctx.arch_scale.n_lira_models
    in_mask = lira_in_out_sets(len(candidates), n, attacker_seed(ctx, 22))
    specs = [ShadowSpec(candidates[in_mask[i]], attacker_seed(ctx, 2000 + i)) for i in range(n)]
    return specs, in_mask


def defence_aware_models(ctx: TargetContext, specs: Sequence[ShadowSpec]) -> list[nn.Module]:
    """Shadow models trained like the target, defence included: one per spec (its members and
    seed), each through the target's defence trainer on :func:`~mcmia_helpers.context.shadow_context`
    and cached like a target. Trained one after another (a defence is not batchable)."""
    models = []
    for spec in specs:
        model, _ = DEFENSES[ctx.spec.defense](shadow_context(ctx, spec.indices, spec.seed))
        models.append(model.cpu().eval())
    return models
