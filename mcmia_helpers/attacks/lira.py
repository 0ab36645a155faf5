"""The likelihood-ratio attack (LiRA, Carlini et al. 2022): IN/OUT halves, Gaussian scores,
and a threshold calibrated leave-one-out on the shadow models."""

from __future__ import annotations

import math

import numpy as np
import torch

from mcmia_helpers.attacks.scores import calibrate_threshold


def lira_in_out_sets(n_candidates: int, n_models: int, seed: int) -> torch.Tensor:
    """``(n_models, n_candidates)`` boolean IN matrix: model ``2k`` trains on a random half of
    the candidates, model ``2k + 1`` on the other half.

    Every candidate is IN for exactly half of the models (for even ``n_models``) and every
    model trains on exactly ``n_candidates // 2`` examples, as many as the target (whose
    members are half of the candidates).
    """
    gen = torch.Generator().manual_seed(seed)
    keep = torch.zeros(n_models, n_candidates, dtype=torch.bool)
    half = n_candidates // 2
    for k in range(0, n_models, 2):
        perm = torch.randperm(n_candidates, generator=gen)
        keep[k, perm[:half]] = True
        if k + 1 < n_models:
            keep[k + 1, perm[half:2 * half]] = True
    return keep


def _pooled_std(values: torch.Tensor, mask: torch.Tensor, means: torch.Tensor) -> float:
    """One standard deviation for all examples: pooled within-example spread when examples
    have at least two observations on average, else the spread across all observations."""
    counts = mask.sum(0).double()
    dof = float((counts - 1).clamp_min(0).sum())
    if dof >= counts.numel():  # about two or more observations per example
        resid = torch.where(mask, values - means, torch.zeros_like(values))
        return float(torch.sqrt((resid ** 2).sum() / dof).clamp_min(1e-6))
    return float(values[mask].std().clamp_min(1e-6)) if mask.sum() > 1 else 1.0


def lira_scores(target_stat: torch.Tensor, shadow_stats: torch.Tensor, in_mask: torch.Tensor,
                online: bool = True, global_variance: bool = True) -> np.ndarray:
    """LiRA scores (higher = member) from the logit-scaled confidences of the shadow models.

    ``target_stat`` ``(E,)``: the statistic on the model under attack; ``shadow_stats``
    ``(N, E)`` and ``in_mask`` ``(N, E)`` (whether shadow model ``n`` trained on example ``e``).
    Online: the Gaussian log-likelihood ratio ``log N(x; mu_in, s_in) - log N(x; mu_out, s_out)``.
    Offline: the one-sided test against the OUT Gaussian, as its z-score ``(x - mu_out) / s_out``
    (the same ranking as ``Phi(z)``, without saturating at 1). ``global_variance`` uses one
    variance for all examples (Carlini et al. recommend it below 64 shadow models); otherwise a
    per-example variance where an example has two or more observations, the global one elsewhere.
    Examples without the needed IN/OUT observations get NaN.
    """
    x = target_stat.double()
    stats = shadow_stats.double()
    in_mask = in_mask.bool()
    out_mask = ~in_mask

    def gaussian(mask: torch.Tensor):
        count = mask.sum(0).double()
        mean = torch.where(mask, stats, torch.zeros_like(stats)).sum(0) / count.clamp_min(1)
        std_global = _pooled_std(stats, mask, mean)
        std = torch.full_like(mean, std_global)
        if not global_variance:
            var = torch.where(mask, (stats - mean) ** 2, torch.zeros_like(stats)).sum(0)
            per = torch.sqrt(var / (count - 1).clamp_min(1)).clamp_min(1e-6)
            std = torch.where(count >= 2, per, std)
        mean = torch.where(count > 0, mean, torch.full_like(mean, math.nan))
        return mean, std

    mu_out, s_out = gaussian(out_mask)
    if not online:
        return ((x - mu_out) / s_out).numpy()
    mu_in, s_in = gaussian(in_mask)

    def log_density(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return -((x - mean) / std) ** 2 / 2 - torch.log(std)  # the 2 pi terms cancel

    return (log_density(mu_in, s_in) - log_density(mu_out, s_out)).numpy()


def lira_threshold(shadow_stats: torch.Tensor, in_mask: torch.Tensor, online: bool,
                   global_variance: bool) -> float | None:
    """Leave-one-out calibration: each shadow model in turn plays the target, scored by the
    others against its own IN/OUT sets; the best threshold over all of them (scored with N-1
    models, so an approximation of the threshold for N). A model trained on exactly the
    complement of the stand-in target's members (its partner in :func:`lira_in_out_sets`'
    pairs) is left out with it, as the zoo leaves out a target's partner: with it, every
    example would be IN for one model fewer when it is a member of the stand-in than when it
    is not, and the stand-in's scores would not be those of a target, whose shadow models
    trained independently of it. ``None`` when the other models cannot score every example
    (fewer than 4 shadow models): the accuracy is then the oracle's."""
    n_models = shadow_stats.shape[0]
    if n_models < 4:
        return None
    in_mask = in_mask.bool()
    scores, labels = [], []
    for j in range(n_models):
        others = [i for i in range(n_models)
                  if i != j and not torch.equal(in_mask[i], ~in_mask[j])]
        s = lira_scores(shadow_stats[j], shadow_stats[others], in_mask[others], online, global_variance)
        ok = np.isfinite(s)
        scores.append(s[ok])
        labels.append(in_mask[j].numpy()[ok])
    scores_all, labels_all = np.concatenate(scores), np.concatenate(labels).astype(np.int64)
    if len(np.unique(labels_all)) < 2:
        return None
    return calibrate_threshold(scores_all, labels_all)
