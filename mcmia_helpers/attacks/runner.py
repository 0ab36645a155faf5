"""Running attacks on one target: scores of every attack asked for, then their metrics.

:func:`compute_attack_scores` trains (or loads) the attacker's models and returns per-example
scores; :func:`run_attacks` adds the metrics with intervals. Used by
:func:`mcmia_helpers.experiments.run_experiment` and the chapters.

The thresholds of the metric attacks and the shadow attack networks are calibrated on
Shokri-style shadow models; ``ctx.spec.calibration`` says which (see
:data:`~mcmia_helpers.attacks.shadows.CALIBRATIONS`): by default (``"target"``) they are trained
with the target's defence, ``"undefended"`` trains them without it. Each such attack's note says
which, and its metrics carry the oracle accuracy next to the calibrated one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.attacks.classifiers import (label_features, top3_features,
                                               inference_scores, train_attack_classifier,
                                               train_inference_model)
from mcmia_helpers.attacks.lira import (DEFAULT_CENTRE, PER_EXAMPLE_VARIANCE_FROM, lira_scores,
                                        lira_threshold)
from mcmia_helpers.attacks.names import (DEFENCE_AWARE_ATTACKS, METRIC_ATTACKS, REFERENCE_ATTACKS,
                                         SHADOW_ATTACKS, THREAT_MODELS, default_attacks,
                                         validate_attack_names)
from mcmia_helpers.attacks.queries import query_views, target_view_logits, view_logits
from mcmia_helpers.attacks.rmia import (RMIA_GAMMA, rmia_scores, rmia_signal, rmia_threshold,
                                        tune_offline_a)
from mcmia_helpers.attacks.scores import METRIC_SCORES, calibrate_threshold, logit_confidence
from mcmia_helpers.attacks.shadows import (attacker_builder, attacker_cache_config, attacker_seed,
                                           calibration_note, calibration_of, defence_aware_models,
                                           defence_description, lira_candidates,
                                           lira_model_specs, shadow_model_specs)
from mcmia_helpers.context import TargetContext
from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_write
from mcmia_helpers.metrics import attack_metrics
from mcmia_helpers.shadow import load_or_train_models, predict_logits_many
from mcmia_helpers.training import predict_logits


@dataclass
class AttackScores:
    """Per-example scores of several attacks on one target.

    ``indices`` (dataset indices), ``labels`` (1 member, 0 non-member) and ``classes`` (true
    class) cover the evaluated examples, members first. ``scores[name]`` holds one score per
    example, NaN where the attack does not evaluate an example (``nasr_inference`` trains on
    half of the members and is evaluated on the other half against as many non-members).
    ``thresholds[name]`` is the calibrated threshold, or None (then the accuracy is the oracle's);
    ``notes[name]`` says what it was calibrated or trained on; ``settings[name]`` its parameters.
    """

    indices: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    #: An attack's parameters where it has any (RMIA's ``gamma`` and ``a``, LiRA's estimates),
    #: copied into its record as ``settings``.
    settings: dict[str, dict] = field(default_factory=dict)

    def evaluated(self, name: str) -> np.ndarray:
        """Boolean mask of the examples ``name`` is evaluated on."""
        return np.isfinite(self.scores[name])

    def metrics(self, n_bootstrap: int = 200, seed: int = 0) -> dict[str, dict]:
        """``{name: attack_metrics(...)}`` plus each attack's threat model, its note and the
        oracle accuracy (``accuracy_oracle``, the best threshold on the target's labels: ``0.5 +
        advantage / 2``) next to the calibrated ``accuracy``."""
        out = {}
        for name, s in self.scores.items():
            mask = self.evaluated(name)
            record = attack_metrics(self.labels[mask], s[mask], self.thresholds.get(name),
                                    n_bootstrap=n_bootstrap, seed=seed)
            record["accuracy_oracle"] = 0.5 + record["advantage"] / 2
            record["knowledge"] = THREAT_MODELS[name]
            if name in self.notes:
                record["note"] = self.notes[name]
            if name in self.settings:
                record["settings"] = dict(self.settings[name])
            out[name] = record
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` (atomically): ``indices``, ``labels``, ``classes``, ``attacks`` and
        per attack ``score_<name>`` (NaN = not evaluated) and ``threshold_<name>`` (NaN = none)."""
        arrays = {"indices": self.indices, "labels": self.labels, "classes": self.classes,
                  "attacks": np.array(list(self.scores), dtype=str)}
        for name, s in self.scores.items():
            arrays[f"score_{name}"] = s
            t = self.thresholds.get(name)
            arrays[f"threshold_{name}"] = np.array(np.nan if t is None else t)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _logits_of(models: Sequence[nn.Module], ctx: TargetContext, indices: torch.Tensor) -> torch.Tensor:
    return predict_logits_many(models, ctx.bundle, indices, device=ctx.device)


def compute_attack_scores(ctx: TargetContext, model: nn.Module,
                          names: str | Iterable[str] | None = None, *,
                          lira_global_variance: bool | None = None,
                          cache: str | os.PathLike | None = None) -> AttackScores:
    """Run the attacks ``names`` (default: :func:`~mcmia_helpers.attacks.names.default_attacks`) against ``model``; return scores.

    Shadow and LiRA models are trained on ``ctx.device`` (together, see
    :mod:`mcmia_helpers.shadow`) or loaded from the cache. The shadow models that calibrate the
    metric attacks' thresholds and train the shadow attack networks follow
    ``ctx.spec.calibration`` (:func:`~mcmia_helpers.attacks.shadows.calibration_of`): with
    ``"target"`` (the default) and a defence they are trained through it, one after another and
    cached like targets (:func:`~mcmia_helpers.attacks.shadows.defence_aware_models`); with
    ``"undefended"`` or no defence they are the plain batched models (today's cache keys).
    ``lira_global_variance`` defaults to ``n_lira_models < 64``. The defence-aware LiRA attacks use the same IN/OUT sets and
    seeds as plain LiRA, with shadow models from :func:`~mcmia_helpers.attacks.shadows.defence_aware_models` (for an
    undefended target they are the plain LiRA models), so the two differ only by the defence.
    """
    names = default_attacks(ctx.arch_scale) if names is None else validate_attack_names(names)
    scale = ctx.arch_scale
    if any(n in SHADOW_ATTACKS + METRIC_ATTACKS for n in names) and scale.n_shadow_models < 1:
        raise UserError(f"the shadow-model attacks need n_shadow_models >= 1 at scale "
                        f"'{ctx.spec.scale}': drop them from --attacks")
    if any(n in REFERENCE_ATTACKS + DEFENCE_AWARE_ATTACKS for n in names) and scale.n_lira_models < 2:
        raise UserError(f"LiRA and RMIA need n_lira_models >= 2 at scale '{ctx.spec.scale}': drop "
                        "the lira_* and rmia_* attacks from --attacks")
    if any(n.startswith("rmia") for n in names) and len(ctx.split.shadow_pool) == 0:
        raise UserError("RMIA needs population samples (the shadow pool), and this split has none: "
                        "drop the rmia_* attacks from --attacks")
    calibration = calibration_of(ctx.spec)  # a bad value fails before any training
    split, bundle, device = ctx.split, ctx.bundle, ctx.device
    model = model.to(device)
    eval_idx = torch.cat([split.members, split.nonmembers])
    labels = np.r_[np.ones(len(split.members)), np.zeros(len(split.nonmembers))].astype(np.int64)
    eval_classes = bundle.labels[eval_idx]
    target_logits = predict_logits(model, bundle, eval_idx, device=device)
    out = AttackScores(eval_idx.numpy(), labels, eval_classes.numpy())

    # Specs of every attacker model needed, trained together where they are missing.
    need_shadow = any(n in SHADOW_ATTACKS + METRIC_ATTACKS for n in names)
    need_aware = any(n in DEFENCE_AWARE_ATTACKS for n in names)
    # Against an undefended target the defence-aware shadow models are the plain LiRA ones.
    need_lira = any(n in REFERENCE_ATTACKS for n in names) or (need_aware and ctx.spec.defense == "none")
    shadow_specs, shadow_in = shadow_model_specs(ctx) if need_shadow else ([], None)
    # Calibrated on the target's defence: the shadow models go through the defence trainer.
    defended_shadows = calibration == "target" and ctx.spec.defense != "none"
    plain_shadow_specs = [] if defended_shadows else shadow_specs
    lira_specs, lira_in = lira_model_specs(ctx) if need_lira or need_aware else ([], None)
    plain_lira_specs = lira_specs if need_lira else []
    all_models, _ = load_or_train_models(attacker_cache_config(ctx), attacker_builder(ctx), bundle,
                                         plain_shadow_specs + plain_lira_specs, ctx.train_config,
                                         device=device, progress=ctx.progress, cache=cache)
    shadow_models = all_models[:len(plain_shadow_specs)]
    lira_models = all_models[len(plain_shadow_specs):]
    if defended_shadows and need_shadow:
        shadow_models = defence_aware_models(ctx, shadow_specs)

    if need_shadow:
        pool = split.shadow_pool
        pool_logits = _logits_of(shadow_models, ctx, pool)  # (S, P, C)
        pool_labels = bundle.labels[pool]
        flat_logits = pool_logits.flatten(0, 1)
        flat_labels = pool_labels.repeat(len(shadow_models))
        flat_in = shadow_in.flatten().long()
        for name in names:
            if name in METRIC_ATTACKS:
                fn = METRIC_SCORES[name]
                out.scores[name] = fn(target_logits, eval_classes)
                out.thresholds[name] = calibrate_threshold(fn(flat_logits, flat_labels), flat_in.numpy())
                out.notes[name] = calibration_note(ctx, len(shadow_models), "threshold calibrated")
        for name, featurise in (("shadow_top3", lambda lg, y: top3_features(lg)),
                                ("shadow_label", label_features)):
            if name in names:
                net = train_attack_classifier(featurise(flat_logits, flat_labels), flat_in,
                                              seed=attacker_seed(ctx, 33))
                with torch.no_grad():
                    out.scores[name] = net(featurise(target_logits, eval_classes)).double().numpy()
                out.thresholds[name] = 0.0  # the attack network's own decision (p = 0.5)
                out.notes[name] = calibration_note(ctx, len(shadow_models), "attack network trained")

    if "nasr_inference" in names:
        out.scores["nasr_inference"], out.notes["nasr_inference"] = _nasr_attack(ctx, model, target_logits,
                                                                                 eval_classes)
        out.thresholds["nasr_inference"] = 0.0

    if need_lira or need_aware:
        candidates = lira_candidates(ctx)
        cand_labels = bundle.labels[candidates]
        to_sorted = torch.argsort(eval_idx)  # candidates == eval_idx[to_sorted]
        to_eval = torch.argsort(to_sorted).numpy()
        views = query_views(ctx)  # the image, and its mirror image when the recipe flips
        n_views = len(views)
        target_cand = target_view_logits(model, ctx, candidates, views)  # (E, V, C)
        need_rmia = any(n.startswith("rmia") for n in names)
        population = split.shadow_pool
        pop_labels = bundle.labels[population]
        target_pop = target_view_logits(model, ctx, population, views) if need_rmia else None
        global_var = (scale.n_lira_models < PER_EXAMPLE_VARIANCE_FROM if lira_global_variance is None
                      else lira_global_variance)
        variance = "global (the reference's: spread of all IN statistics)" if global_var else "per-example"
        queries = ("image and mirror image averaged (the recipe trains with flips)" if n_views > 1
                   else "one view")

        def stat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            """LiRA's statistic ``(..., E, V)`` from logits ``(..., E, V, C)``."""
            return logit_confidence(logits.transpose(-2, -3), labels.expand(*logits.shape[:-3], n_views, -1)
                                    ).transpose(-1, -2)

        def signal(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return rmia_signal(logits.transpose(-2, -3), labels.expand(*logits.shape[:-3], n_views, -1)
                               ).transpose(-1, -2)

        def add_lira(models: Sequence[nn.Module], pairs: tuple[tuple[str, bool], ...], how: str) -> None:
            if not any(name in names for name, _ in pairs):
                return
            shadow_stats = stat(view_logits(models, ctx, candidates, views), cand_labels)  # (N, E, V)
            target_stat = stat(target_cand, cand_labels)
            for name, online in pairs:
                if name in names:
                    s = lira_scores(target_stat, shadow_stats, lira_in, online, global_var)
                    out.scores[name] = s[to_eval]
                    out.thresholds[name] = lira_threshold(shadow_stats, lira_in, online, global_var)
                    out.settings[name] = {"centre": DEFAULT_CENTRE[online],
                                          "variance": "global" if global_var else "per-example",
                                          "offline_test": "one-sided", "query_views": n_views}
                    out.notes[name] = (f"{len(models)} shadow models{how}, {DEFAULT_CENTRE[online]} centres, "
                                       f"{variance} variance"
                                       + ("" if online else ", one-sided test")
                                       + f"; queries: {queries}; threshold "
                                       + ("leave-one-out on the shadow models"
                                          if out.thresholds[name] is not None
                                          else "not calibrated (fewer than 4 shadow models): oracle"))

        def add_rmia(models: Sequence[nn.Module], pairs: tuple[tuple[str, bool], ...], how: str) -> None:
            if not any(name in names for name, _ in pairs):
                return
            ref_x = signal(view_logits(models, ctx, candidates, views), cand_labels)  # (N, E, V)
            ref_z = signal(view_logits(models, ctx, population, views), pop_labels)  # (N, Z, V)
            tx, tz = signal(target_cand, cand_labels), signal(target_pop, pop_labels)
            # The population is the shadow pool: no reference model trained on it (ref_z_in None).
            a, a_how = tune_offline_a(ref_x, lira_in, ref_z, None, gamma=RMIA_GAMMA)
            for name, online in pairs:
                if name in names:
                    options = {"online": online, "a": a, "gamma": RMIA_GAMMA}
                    s = rmia_scores(tx, ref_x, lira_in, tz, ref_z, None, **options)
                    out.scores[name] = s[to_eval]
                    out.thresholds[name] = rmia_threshold(ref_x, lira_in, ref_z, None, **options)
                    out.settings[name] = {"gamma": RMIA_GAMMA, "query_views": n_views,
                                          "population": len(population),
                                          **({} if online else {"a": a, "a_how": a_how})}
                    out.notes[name] = (f"{len(models)} reference models{how}; population: "
                                       f"{len(population)} shadow-pool examples; gamma = {RMIA_GAMMA:g}"
                                       + ("" if online else f", {a_how}")
                                       + f"; queries: {queries}; threshold "
                                       + ("leave-one-out on the reference models"
                                          if out.thresholds[name] is not None
                                          else "not calibrated (fewer than 4 reference models): oracle"))

        plain = (("lira_online", True), ("lira_offline", False))
        plain_rmia = (("rmia_online", True), ("rmia_offline", False))
        if any(n in REFERENCE_ATTACKS for n in names):
            add_lira(lira_models, plain, "")
            add_rmia(lira_models, plain_rmia, "")
        if need_aware:
            aware = lira_models if ctx.spec.defense == "none" else defence_aware_models(ctx, lira_specs)
            how = f" trained with the target's defence ({defence_description(ctx)})"
            add_lira(aware, (("lira_online_aware", True), ("lira_offline_aware", False)), how)
            add_rmia(aware, (("rmia_online_aware", True), ("rmia_offline_aware", False)), how)
    out.scores = {n: out.scores[n] for n in names}  # in the order asked for
    return out


@dataclass
class NasrSets:
    """Who is who in the Nasr et al. attack, as positions in ``split.members`` / ``split.nonmembers``.

    ``known``: members the attacker knows (half, its training positives); ``held_out``: the other
    members, evaluated; ``eval_nonmembers``: as many non-members, evaluated; ``reference``: dataset
    indices from the shadow pool, the attacker's training negatives (never evaluated).
    """

    known: torch.Tensor
    held_out: torch.Tensor
    eval_nonmembers: torch.Tensor
    reference: torch.Tensor


def nasr_sets(ctx: TargetContext) -> NasrSets:
    """The seeded, disjoint training and evaluation sets of ``nasr_inference``."""
    split = ctx.split
    n_mem, n_non = len(split.members), len(split.nonmembers)
    gen = torch.Generator().manual_seed(attacker_seed(ctx, 44))
    perm = torch.randperm(n_mem, generator=gen)
    known, held_out = perm[:n_mem // 2], perm[n_mem // 2:]
    n_eval = min(len(held_out), n_non)
    eval_non = torch.randperm(n_non, generator=gen)[:n_eval]
    n_ref = min(len(known), len(split.shadow_pool))
    reference = split.shadow_pool[torch.randperm(len(split.shadow_pool), generator=gen)[:n_ref]]
    return NasrSets(known.sort().values, held_out[:n_eval].sort().values, eval_non.sort().values,
                    reference.sort().values)


def _nasr_attack(ctx: TargetContext, model: nn.Module, target_logits: torch.Tensor,
                 eval_classes: torch.Tensor) -> tuple[np.ndarray, str]:
    """Nasr et al.'s inference attack on the sets of :func:`nasr_sets`. Returns scores in the
    evaluation order (members, then non-members), NaN for examples not evaluated, and a note."""
    sets = nasr_sets(ctx)
    n_mem = len(ctx.split.members)
    ref_logits = predict_logits(model, ctx.bundle, sets.reference, device=ctx.device)
    probs = F.softmax(target_logits.float(), dim=-1)
    net = train_inference_model(probs[sets.known], eval_classes[sets.known],
                                F.softmax(ref_logits.float(), dim=-1), ctx.bundle.labels[sets.reference],
                                seed=attacker_seed(ctx, 45))
    all_scores = inference_scores(net, target_logits, eval_classes)
    scores = np.full(len(all_scores), np.nan)
    evaluated = torch.cat([sets.held_out, n_mem + sets.eval_nonmembers]).numpy()
    scores[evaluated] = all_scores[evaluated]
    note = (f"trained on {len(sets.known)} known members vs {len(sets.reference)} reference "
            f"non-members (shadow pool); evaluated on the other {len(sets.held_out)} members vs "
            f"{len(sets.eval_nonmembers)} non-members")
    return scores, note


def run_attacks(ctx: TargetContext, model: nn.Module, names: str | Iterable[str] | None = None, *,
                save_scores: str | os.PathLike | None = None, n_bootstrap: int = 200,
                cache: str | os.PathLike | None = None) -> dict[str, dict]:
    """Run membership inference attacks on ``model`` (the target of ``ctx``); return their metrics.

    Evaluates on ``ctx.split.members`` (label 1) vs ``ctx.split.nonmembers`` (label 0) and
    returns ``{name: attack_metrics(...) + {"accuracy_oracle", "knowledge", "note"?}}`` for each attack in
    ``names`` (a list or a comma-separated string; default: all that ``ctx.arch_scale``
    affords). ``save_scores`` writes the per-example scores as an ``.npz`` (see
    :meth:`AttackScores.save`).
    """
    scores = compute_attack_scores(ctx, model, names, cache=cache)
    if save_scores is not None:
        scores.save(save_scores)
    return scores.metrics(n_bootstrap=n_bootstrap, seed=int(ctx.spec.seed))
