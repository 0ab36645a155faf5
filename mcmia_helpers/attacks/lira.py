"""The likelihood-ratio attack (LiRA, Carlini et al. 2022) as its authors run it: IN/OUT halves,
Gaussian scores, and a threshold calibrated leave-one-out on the shadow models.

The reference is the authors' code, tensorflow/privacy ``research/mi_lira_2021`` (``score.py``
for the statistic, ``plot.py`` for the scores, ``inference.py`` for the queries);
``tests/test_lira_reference.py`` holds our scores against numbers that code produced. What we
share with it, and the defaults:

- centres: per-example medians (``centre="median"``, the reference's ``np.median``) or means
  (``centre="mean"``, the estimate before issue 25) of the shadow models' statistics, chosen by
  measurement (:data:`DEFAULT_CENTRE`): ``benchmarks/lira_variants.py`` scored both on the same
  logits of the 16-model ``ci`` zoo (LeNet-5, Fashion-MNIST, 14 shadow models per target, 8,000
  pooled non-members; ``benchmarks/results/lira_variants.json``). Online, medians name more
  members at low FPR (TPR at 1% FPR 6.71% against 6.06% with the reference's variance; AUC
  0.659 against 0.671): online LiRA uses medians, as the reference does. Offline (one-sided),
  means do (TPR at 1% FPR 4.04% against 2.97%; AUC 0.664 against 0.665): offline LiRA keeps
  means, a measured deviation from the reference. The evidence is not one-sided: on chapter
  1's single book-scale target (8 shadow models, 1,000 non-members) means gave 3.7% against
  medians' 4.2% at 1% FPR, on its 8-model zoo (6 shadow models) 3.6% against 2.8%;
- variance: below 64 shadow models one spread for all examples (``global_variance``). The
  reference's estimate (``variance="reference"``, the default) is the standard deviation of all
  IN statistics (every example, every view), used for IN and OUT alike (``fix_variance=True``
  in ``plot.py``); offline, that of all OUT statistics. ``variance="pooled"`` is the estimate
  before issue 25: the within-example spread around each example's centre, pooled over
  examples, separately for IN and OUT. Measured on the same zoo, online with medians, pooled
  gives TPR at 1% FPR 7.44% against the reference's 6.71% (AUC 0.661 against 0.659); a global
  spread does not change the one-sided offline ranking at all. From 64 shadow models on,
  each example's own standard deviation (``ddof=0``, as the reference; the global one where
  an example has fewer than two observations);
- views: the statistic may carry a last axis of query views (the image and its mirror image,
  when the recipe trains with flips, as ``inference.py`` queries); each view gets its own
  Gaussians and the per-view scores are averaged (``score.mean(1)`` in ``plot.py``);
- offline: *one-sided*, as the paper states the test (Carlini et al., Algorithm 1: a score
  below the OUT centre is no evidence of membership), returned as the z-score
  ``(x - mu_out) / s_out`` (the ranking of ``Phi(z)`` without its saturation at 1). The
  reference's code is *two-sided* (``-norm.logpdf(x; mu_out, s_out)``, which also flags
  examples far *below* their OUT centre); ``offline_test="two-sided"`` reproduces it. Measured
  on the same zoo (means; medians): AUC 0.664 one-sided against 0.562 two-sided (0.665 against
  0.553), TPR at 1% FPR 4.04% against 2.78% (2.97% against 2.26%);
- measured on models trained with random crop and flip (16 LeNet-5 models, same benchmark),
  averaging the mirror image's score with the image's raises the TPR at 1% FPR of LiRA online
  from 2.06% to 2.50% and offline from 1.84% to 2.25% (AUC 0.551 / 0.568 either way).

Where we differ from the reference on purpose: it truncates every example's IN (and OUT)
observations to the smallest count over examples; we use all of them (our IN/OUT designs give
every example the same count, so the two agree there).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mcmia_helpers.attacks.scores import calibrate_threshold

#: Estimates of a LiRA Gaussian's centre, and of its spread below the per-example threshold.
CENTRES = ("median", "mean")
#: The centre each form uses by default, chosen by measurement (see the module docstring).
DEFAULT_CENTRE = {True: "median", False: "mean"}
VARIANCES = ("reference", "pooled")
OFFLINE_TESTS = ("one-sided", "two-sided")
#: From this many shadow models on, each example's own variance (Carlini et al.).
PER_EXAMPLE_VARIANCE_FROM = 64


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


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")


def _centre(stats: torch.Tensor, mask: torch.Tensor, centre: str) -> torch.Tensor:
    """Per-example (and per-view) centre of the observations in ``mask``; NaN without any."""
    masked = torch.where(mask, stats, torch.full_like(stats, float("nan")))
    if centre == "median":  # interpolated, as np.median (torch.median takes the lower one)
        return torch.nanquantile(masked, 0.5, dim=0)
    count = mask.sum(0).double()
    mean = torch.where(mask, stats, torch.zeros_like(stats)).sum(0) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def _pooled_std(stats: torch.Tensor, mask: torch.Tensor, centres: torch.Tensor) -> float:
    """The estimate before issue 25: pooled within-example spread around the centres when
    examples have at least two observations on average, else the spread of all observations."""
    counts = mask.sum(0).double()
    dof = float((counts - 1).clamp_min(0).sum())
    if dof >= counts.numel():  # about two or more observations per example
        resid = torch.where(mask, stats - torch.nan_to_num(centres), torch.zeros_like(stats))
        return float(torch.sqrt((resid ** 2).sum() / dof).clamp_min(1e-6))
    return float(stats[mask].std().clamp_min(1e-6)) if mask.sum() > 1 else 1.0


def _total_std(stats: torch.Tensor, mask: torch.Tensor) -> float:
    """The reference's global spread: the (``ddof=0``) standard deviation of every observation
    in ``mask``, all examples and views together (``np.std(dat_in)`` in ``plot.py``)."""
    values = stats[mask]
    return float(values.std(unbiased=False).clamp_min(1e-6)) if values.numel() > 1 else 1.0


def _per_example_std(stats: torch.Tensor, mask: torch.Tensor, centre_mean: torch.Tensor,
                     fallback: float) -> torch.Tensor:
    """Each example's own (``ddof=0``) spread around its mean, ``fallback`` below 2 observations."""
    count = mask.sum(0).double()
    var = torch.where(mask, (stats - torch.nan_to_num(centre_mean)) ** 2, torch.zeros_like(stats)).sum(0)
    per = torch.sqrt(var / count.clamp_min(1)).clamp_min(1e-6)
    return torch.where(count >= 2, per, torch.full_like(per, fallback))


def lira_scores(target_stat: torch.Tensor, shadow_stats: torch.Tensor, in_mask: torch.Tensor,
                online: bool = True, global_variance: bool = True, *, centre: str | None = None,
                variance: str = "reference", offline_test: str = "one-sided") -> np.ndarray:
    """LiRA scores (higher = member) from the logit-scaled confidences of the shadow models.

    ``target_stat`` ``(E,)`` or ``(E, V)`` (``V`` query views: the image and its mirror image):
    the statistic on the model under attack; ``shadow_stats`` ``(N, E)`` or ``(N, E, V)`` and
    ``in_mask`` ``(N, E)`` (whether shadow model ``n`` trained on example ``e``).
    Online: the Gaussian log-likelihood ratio ``log N(x; mu_in, s_in) - log N(x; mu_out, s_out)``.
    Offline: the one-sided test against the OUT Gaussian, as its z-score ``(x - mu_out) / s_out``
    (``offline_test="two-sided"``: the reference code's ``-log N(x; mu_out, s_out)``). With
    views, each view's score is computed on its own and the scores are averaged.
    ``global_variance`` uses one variance for all examples (Carlini et al. recommend it below 64
    shadow models), estimated as ``variance`` says (see the module docstring); otherwise each
    example's own variance where it has two or more observations, the global one elsewhere.
    ``centre`` None: :data:`DEFAULT_CENTRE` (medians online, means offline).
    Examples without the needed IN/OUT observations get NaN.
    """
    centre = DEFAULT_CENTRE[bool(online)] if centre is None else centre
    _check("centre", centre, CENTRES)
    _check("variance", variance, VARIANCES)
    _check("offline_test", offline_test, OFFLINE_TESTS)
    x = target_stat.double()
    stats = shadow_stats.double()
    in_mask = in_mask.bool()
    if stats.dim() == 3:  # views: one mask for all views of an example
        in_mask = in_mask.unsqueeze(-1).expand_as(stats)
    else:
        x, stats, in_mask = x.unsqueeze(-1), stats.unsqueeze(-1), in_mask.unsqueeze(-1)
    out_mask = ~in_mask

    def gaussian(mask: torch.Tensor, shared: float | None):
        mu = _centre(stats, mask, centre)
        if variance == "pooled":
            std_global = _pooled_std(stats, mask, mu)
        else:
            std_global = _total_std(stats, mask) if shared is None else shared
        std = torch.full_like(mu, std_global)
        if not global_variance:
            std = _per_example_std(stats, mask, _centre(stats, mask, "mean"), std_global)
        return mu, std

    if not online:
        mu_out, s_out = gaussian(out_mask, None)
        z = (x - mu_out) / s_out
        if offline_test == "one-sided":
            return z.mean(-1).numpy()
        return (z ** 2 / 2 + torch.log(s_out) + 0.5 * math.log(2 * math.pi)).mean(-1).numpy()  # -log N
    mu_in, s_in = gaussian(in_mask, None)
    # The reference's one spread for IN and OUT is that of the IN statistics.
    mu_out, s_out = gaussian(out_mask, _total_std(stats, in_mask) if variance == "reference" else None)

    def log_density(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return -((x - mean) / std) ** 2 / 2 - torch.log(std)  # the 2 pi terms cancel

    return (log_density(mu_in, s_in) - log_density(mu_out, s_out)).mean(-1).numpy()


def lira_threshold(shadow_stats: torch.Tensor, in_mask: torch.Tensor, online: bool,
                   global_variance: bool, **options) -> float | None:
    """Leave-one-out calibration: each shadow model in turn plays the target, scored by the
    others against its own IN/OUT sets; the best threshold over all of them (scored with N-1
    models, so an approximation of the threshold for N). A model trained on exactly the
    complement of the stand-in target's members (its partner in :func:`lira_in_out_sets`'
    pairs) is left out with it, as the zoo leaves out a target's partner: with it, every
    example would be IN for one model fewer when it is a member of the stand-in than when it
    is not, and the stand-in's scores would not be those of a target, whose shadow models
    trained independently of it. ``None`` when the other models cannot score every example
    (fewer than 4 shadow models): the accuracy is then the oracle's. ``options`` are
    :func:`lira_scores`' keyword options (centre, variance, offline test)."""
    n_models = shadow_stats.shape[0]
    if n_models < 4:
        return None
    in_mask = in_mask.bool()
    scores, labels = [], []
    for j in range(n_models):
        others = [i for i in range(n_models)
                  if i != j and not torch.equal(in_mask[i], ~in_mask[j])]
        s = lira_scores(shadow_stats[j], shadow_stats[others], in_mask[others], online,
                        global_variance, **options)
        ok = np.isfinite(s)
        scores.append(s[ok])
        labels.append(in_mask[j].numpy()[ok])
    scores_all, labels_all = np.concatenate(scores), np.concatenate(labels).astype(np.int64)
    if len(np.unique(labels_all)) < 2:
        return None
    return calibrate_threshold(scores_all, labels_all)
