"""Membership inference attacks (chapter 1, threat models; later chapters reuse them).

Every attack returns one *score* per queried example, higher = more likely a member, and is
evaluated by :func:`mcmia_helpers.metrics.attack_metrics`. All attacks query the target as a
black box (its softmax output; the loss needs the true label too, which the attacker holds for
its own queries). What else each attacker knows is its threat model, stated in
:data:`THREAT_MODELS` and in each record; no attack sees the target's membership labels unless
its threat model says so (only ``nasr_inference``, which knows half of the members).

- ``shadow_top3``: Shokri et al. (2017) shadow models + Salem et al.'s (2019) ML-Leaks features: an attack network on the sorted top-3 posteriors.
- ``shadow_label``: the same shadow models; attack network on label-conditioned features (true-class log-probability, top-3, correctness, one-hot label).
- ``nasr_inference``: Nasr et al. (2018) inference model (posterior branch + label branch), trained on half of the members (known to the attacker) against reference non-members.
- ``loss``: Yeom et al. (2018): low loss = member.
- ``confidence``: largest softmax probability (label-free; the true-class probability would be a monotone function of the loss, the same attack).
- ``entropy``: low prediction entropy = member (label-free).
- ``modified_entropy``: Song and Mittal (2021): entropy that accounts for the true label.
- ``correctness``: correct prediction = member (the "gap attack").
- ``lira_online``: Carlini et al. (2022) likelihood-ratio attack with IN and OUT shadow models.
- ``lira_offline``: LiRA with OUT models only (one-sided test).
- ``lira_online_aware`` / ``lira_offline_aware``: LiRA whose shadow models are trained with the
  target's defence and its parameters (e.g. pruned to the same sparsity), the stronger attacker
  of Yuan and Zhang (2022). Not in the defaults: each shadow model is a full defended training.

Thresholds (for the attack *accuracy*; AUC and TPR at low FPR need none) are calibrated on
the attacker's own shadow models, never on the target's membership labels. The entry point is
:func:`run_attacks`; :func:`compute_attack_scores` returns the raw scores (for ROC curves and
histograms) without the metrics.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import attack_metrics, best_threshold
from mcmia_helpers.models import build_model
from mcmia_helpers.shadow import ShadowSpec, load_or_train_models, predict_logits_many
from mcmia_helpers.training import predict_logits

if TYPE_CHECKING:  # experiments imports this module's users; avoid a cycle at import time
    from mcmia_helpers.experiments import TargetContext
    from mcmia_helpers.scales import ArchScale

SHADOW_ATTACKS = ("shadow_top3", "shadow_label")
METRIC_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy", "correctness")
LIRA_ATTACKS = ("lira_online", "lira_offline")
DEFENCE_AWARE_ATTACKS = ("lira_online_aware", "lira_offline_aware")
ATTACKS: tuple[str, ...] = (SHADOW_ATTACKS + ("nasr_inference",) + METRIC_ATTACKS + LIRA_ATTACKS
                            + DEFENCE_AWARE_ATTACKS)

#: What each attacker knows besides black-box access to the target's softmax output.
THREAT_MODELS: dict[str, str] = {
    "shadow_top3": "data from the target's distribution (shadow pool), the architecture and training "
                   "recipe; attack network trained on shadow models' sorted top-3 posteriors",
    "shadow_label": "as shadow_top3, plus the true label of each query",
    "nasr_inference": "half of the target's members (known members) and reference non-members from "
                      "the same distribution; evaluated on the other half of the members",
    "loss": "the true label of each query; threshold calibrated on shadow models",
    "confidence": "nothing else (label-free); threshold calibrated on shadow models",
    "entropy": "nothing else (label-free); threshold calibrated on shadow models",
    "modified_entropy": "the true label of each query; threshold calibrated on shadow models",
    "correctness": "the true label of each query; threshold calibrated on shadow models",
    "lira_online": "the candidate set (members and non-members, not which is which), the architecture "
                   "and training recipe; shadow models trained on random halves of the candidates",
    "lira_offline": "as lira_online, but uses only shadow models that did not train on the query",
    "lira_online_aware": "as lira_online, plus the target's defence and its parameters: every shadow "
                         "model is trained with that defence (e.g. pruned to the same sparsity)",
    "lira_offline_aware": "as lira_offline, with shadow models trained with the target's defence",
}

_LOG_FLOOR = 1e-20  # smallest probability kept in log features (log = -46)


# --------------------------------------------------------------------------- names


def validate_attack_names(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """Attack names as a tuple (a string is split on commas); unknown names raise a UserError."""
    if names is None:
        return ATTACKS
    if isinstance(names, str):
        names = [n for n in (s.strip() for s in names.split(",")) if n]
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack(s) {', '.join(map(repr, unknown))}: choose from "
                        f"{', '.join(ATTACKS)}")
    if not names:
        raise UserError(f"no attack named: choose from {', '.join(ATTACKS)}")
    return names


def default_attacks(scale: "ArchScale") -> tuple[str, ...]:
    """Every attack the scale affords: shadow-model attacks need ``n_shadow_models >= 1``, LiRA
    needs ``n_lira_models >= 2`` (one IN and one OUT model per example). The defence-aware LiRA
    attacks are never defaults (they repeat the defended training ``n_lira_models`` times)."""
    out = []
    for name in ATTACKS:
        if name in DEFENCE_AWARE_ATTACKS:
            continue
        if name in SHADOW_ATTACKS + METRIC_ATTACKS and scale.n_shadow_models < 1:
            continue
        if name in LIRA_ATTACKS and scale.n_lira_models < 2:
            continue
        out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------- signals


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.double(), dim=-1)


def _true(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return x.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def loss_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``-cross-entropy``: Yeom et al.'s loss attack (members have low loss)."""
    return _true(_log_probs(logits), labels).numpy()


def confidence_score(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """The largest softmax probability (label-free), as its log for resolution near 1."""
    return _log_probs(logits).max(-1).values.numpy()


def entropy_score(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """``-entropy`` of the softmax output (label-free): members get confident outputs."""
    logp = _log_probs(logits)
    return (logp.exp() * logp).sum(-1).numpy()


def modified_entropy_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``-Mentr`` of Song and Mittal (2021):
    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``, low for members."""
    logp = _log_probs(logits)
    p = logp.exp()
    log1mp = torch.log1p(-p.clamp(max=1 - 1e-16))
    onehot = F.one_hot(labels.long(), p.shape[-1]).bool()
    p_y, logp_y = _true(p, labels), _true(logp, labels)
    other = torch.where(onehot, torch.zeros_like(p), p * log1mp).sum(-1)
    mentr = -(1 - p_y) * logp_y - other
    return (-mentr).numpy()


def correctness_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """1 when the prediction is correct, else 0 (the gap attack)."""
    return (logits.argmax(-1) == labels).double().numpy()


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's statistic ``log(p_y / (1 - p_y))``, computed stably from the logits."""
    z = logits.double()
    z_y = _true(z, labels)
    others = z.masked_fill(F.one_hot(labels.long(), z.shape[-1]).bool(), -math.inf)
    return z_y - torch.logsumexp(others, dim=-1)


METRIC_SCORES: dict[str, Callable[[torch.Tensor, torch.Tensor], np.ndarray]] = {
    "loss": loss_score, "confidence": confidence_score, "entropy": entropy_score,
    "modified_entropy": modified_entropy_score, "correctness": correctness_score,
}


def calibrate_threshold(shadow_scores: np.ndarray, shadow_in: np.ndarray) -> float:
    """The attacker's threshold: best balanced accuracy on its *shadow* models' own members
    (``shadow_in`` = 1) and non-members (0). Takes no target information by construction."""
    return best_threshold(np.asarray(shadow_in, dtype=np.int64), np.asarray(shadow_scores))


# --------------------------------------------------------------------------- attack networks


def _sorted_top3_features(logits: torch.Tensor) -> torch.Tensor:
    logp = _log_probs(logits).clamp_min(math.log(_LOG_FLOOR))
    k = min(3, logp.shape[-1])
    return logp.topk(k, dim=-1).values.float()


def _label_features(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = _log_probs(logits).clamp_min(math.log(_LOG_FLOOR))
    correct = (logits.argmax(-1) == labels).double().unsqueeze(-1)
    onehot = F.one_hot(labels.long(), logits.shape[-1]).double()
    return torch.cat([_true(logp, labels).unsqueeze(-1), _sorted_top3_features(logits).double(),
                      correct, onehot], dim=-1).float()


def _train_binary(net: nn.Module, inputs: Sequence[torch.Tensor], targets: torch.Tensor,
                  epochs: int, seed: int, lr: float = 1e-3, batch_size: int = 64,
                  weight_decay: float = 0.0) -> nn.Module:
    """Train ``net(*inputs) -> logits (B,)`` with balanced binary cross-entropy; return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    targets = targets.float()
    n_pos = float(targets.sum())
    n_neg = float(len(targets) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise UserError("an attack model needs both members and non-members to train on")
    pos_weight = torch.tensor(n_neg / n_pos)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = net(*(x[idx] for x in inputs))
            loss = F.binary_cross_entropy_with_logits(logits, targets[idx], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


class _StandardisedMLP(nn.Module):
    """Features standardised with the training set's mean and std, then a 2-layer MLP -> logit."""

    def __init__(self, features: torch.Tensor, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", features.mean(0))
        self.register_buffer("std", features.std(0).clamp_min(1e-6))
        self.net = nn.Sequential(nn.Linear(features.shape[1], hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


def train_attack_classifier(features: torch.Tensor, is_member: torch.Tensor, seed: int = 0,
                            epochs: int = 40, hidden: int = 64) -> nn.Module:
    """The attack network of the shadow-model attack: features -> membership logit.

    Trained on the shadow models' outputs on their own members (1) and non-members (0).
    """
    torch.manual_seed(seed)
    net = _StandardisedMLP(features.float(), hidden)
    return _train_binary(net, [features.float()], is_member, epochs, seed, batch_size=128)


class InferenceModel(nn.Module):
    """Nasr et al.'s (2018) inference model: is ``(softmax output, label)`` a training member?

    Two branches, one for the posterior vector and one for the one-hot label, joined by fully
    connected layers that end in one logit (higher = member). The widths follow Nasr et al.'s
    layout scaled by ``hidden``: posterior ``C -> 4h -> 2h -> h``, label ``C -> 2h -> h``, joint
    ``2h -> 4h -> h -> 1``. With ``log_features`` (default) the posterior branch also sees
    ``log p`` (floored at 1e-20 and scaled to [-1, 0]), which keeps confident outputs apart
    that raw probabilities round to 1; ``log_features=False`` is Nasr et al.'s exact input.

    Public and stable: the Min-Max defence trains against it (``forward`` is differentiable in
    ``probs``).
    """

    def __init__(self, num_classes: int, hidden: int = 64, log_features: bool = True):
        super().__init__()
        if num_classes < 2 or hidden < 1:
            raise UserError(f"InferenceModel needs num_classes >= 2 and hidden >= 1 "
                            f"(got {num_classes}, {hidden})")
        self.num_classes = num_classes
        self.log_features = log_features
        width_in = num_classes * (2 if log_features else 1)
        self.posterior = nn.Sequential(nn.Linear(width_in, 4 * hidden), nn.ReLU(),
                                       nn.Linear(4 * hidden, 2 * hidden), nn.ReLU(),
                                       nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.label = nn.Sequential(nn.Linear(num_classes, 2 * hidden), nn.ReLU(),
                                   nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.joint = nn.Sequential(nn.Linear(2 * hidden, 4 * hidden), nn.ReLU(),
                                   nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Membership logits ``(B,)`` for softmax outputs ``probs (B, C)`` and labels ``onehot (B, C)``."""
        x = probs
        if self.log_features:
            x = torch.cat([probs, torch.log(probs + _LOG_FLOOR) / -math.log(_LOG_FLOOR)], dim=-1)
        h = torch.cat([self.posterior(x), self.label(onehot.to(probs.dtype))], dim=-1)
        return self.joint(h).squeeze(-1)


def train_inference_model(model_probs_members: torch.Tensor, labels_members: torch.Tensor,
                          probs_nonmembers: torch.Tensor, labels_nonmembers: torch.Tensor,
                          epochs: int = 30, seed: int = 0, *, hidden: int = 64, lr: float = 1e-3,
                          batch_size: int = 64, weight_decay: float = 1e-4) -> InferenceModel:
    """Train an :class:`InferenceModel` on softmax outputs of known members vs non-members.

    ``*_probs`` are ``(N, C)`` softmax outputs of the model under attack, ``labels_*`` the true
    class indices ``(N,)``. Classes are re-weighted if the two sets differ in size. Returns the
    model in eval mode, on the CPU.
    """
    probs = torch.cat([model_probs_members, probs_nonmembers]).float().cpu()
    labels = torch.cat([labels_members, labels_nonmembers]).long().cpu()
    num_classes = probs.shape[1]
    target = torch.cat([torch.ones(len(model_probs_members)), torch.zeros(len(probs_nonmembers))])
    torch.manual_seed(seed)
    net = InferenceModel(num_classes, hidden)
    onehot = F.one_hot(labels, num_classes).float()
    return _train_binary(net, [probs, onehot], target, epochs, seed, lr, batch_size, weight_decay)


@torch.no_grad()
def inference_scores(net: InferenceModel, logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The inference model's membership logits for target logits and true labels."""
    probs = F.softmax(logits.float(), dim=-1)
    return net(probs, F.one_hot(labels.long(), probs.shape[1]).float()).double().numpy()


# --------------------------------------------------------------------------- LiRA


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
    models, so an approximation of the threshold for N). ``None`` when the other models cannot
    score every example (fewer than 4 shadow models): the accuracy is then the oracle's."""
    n_models = shadow_stats.shape[0]
    if n_models < 4:
        return None
    scores, labels = [], []
    for j in range(n_models):
        others = [i for i in range(n_models) if i != j]
        s = lira_scores(shadow_stats[j], shadow_stats[others], in_mask[others], online, global_variance)
        ok = np.isfinite(s)
        scores.append(s[ok])
        labels.append(in_mask[j].numpy()[ok])
    scores_all, labels_all = np.concatenate(scores), np.concatenate(labels).astype(np.int64)
    if len(np.unique(labels_all)) < 2:
        return None
    return calibrate_threshold(scores_all, labels_all)


# --------------------------------------------------------------------------- the attacker's models


def attacker_builder(ctx: "TargetContext") -> Callable[[], nn.Module]:
    """Builds untrained models of the target's architecture (no reseeding: the caller seeds)."""
    def build() -> nn.Module:
        return build_model(ctx.spec.arch, num_classes=ctx.bundle.num_classes,
                           in_channels=ctx.bundle.in_channels, image_size=ctx.bundle.image_size,
                           width=ctx.arch_scale.width)
    return build


def _base_cache_config(ctx: "TargetContext") -> dict[str, Any]:
    return {"arch": ctx.spec.arch, "dataset": ctx.bundle.name_used, "view": ctx.bundle.view,
            "width": ctx.arch_scale.width, "num_classes": ctx.bundle.num_classes}


def _seed(ctx: "TargetContext", role: int) -> int:
    return int(ctx.spec.seed) * 100_000 + role


def shadow_model_specs(ctx: "TargetContext") -> tuple[list[ShadowSpec], torch.Tensor]:
    """Shokri-style shadow models: each trains on a random half of the shadow pool.

    Returns the specs and an ``(n_shadow, len(shadow_pool))`` IN matrix.
    """
    pool = ctx.split.shadow_pool
    n = ctx.arch_scale.n_shadow_models
    gen = torch.Generator().manual_seed(_seed(ctx, 11))
    in_mask = torch.zeros(n, len(pool), dtype=torch.bool)
    specs = []
    for i in range(n):
        half = torch.randperm(len(pool), generator=gen)[:len(pool) // 2].sort().values
        in_mask[i, half] = True
        specs.append(ShadowSpec(pool[half], _seed(ctx, 1000 + i)))
    return specs, in_mask


def lira_candidates(ctx: "TargetContext") -> torch.Tensor:
    """LiRA's candidate set: members and non-members as one sorted index set (the attacker knows
    the candidates, not which are members)."""
    return torch.cat([ctx.split.members, ctx.split.nonmembers]).sort().values


def lira_model_specs(ctx: "TargetContext") -> tuple[list[ShadowSpec], torch.Tensor]:
    """LiRA's shadow models: complementary random halves of the candidates (see
    :func:`lira_in_out_sets`). Returns the specs and the ``(N, len(candidates))`` IN matrix."""
    candidates = lira_candidates(ctx)
    n = ctx.arch_scale.n_lira_models
    in_mask = lira_in_out_sets(len(candidates), n, _seed(ctx, 22))
    specs = [ShadowSpec(candidates[in_mask[i]], _seed(ctx, 2000 + i)) for i in range(n)]
    return specs, in_mask


# --------------------------------------------------------------------------- scores


@dataclass
class AttackScores:
    """Per-example scores of several attacks on one target.

    ``indices`` (dataset indices), ``labels`` (1 member, 0 non-member) and ``classes`` (true
    class) cover the evaluated examples, members first. ``scores[name]`` holds one score per
    example, NaN where the attack does not evaluate an example (``nasr_inference`` trains on
    half of the members and is evaluated on the other half against as many non-members).
    ``thresholds[name]`` is the calibrated threshold, or None (then the accuracy is the oracle's).
    """

    indices: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def evaluated(self, name: str) -> np.ndarray:
        """Boolean mask of the examples ``name`` is evaluated on."""
        return np.isfinite(self.scores[name])

    def metrics(self, n_bootstrap: int = 200, seed: int = 0) -> dict[str, dict]:
        """``{name: attack_metrics(...)}`` plus each attack's threat model and evaluation set."""
        out = {}
        for name, s in self.scores.items():
            mask = self.evaluated(name)
            record = attack_metrics(self.labels[mask], s[mask], self.thresholds.get(name),
                                    n_bootstrap=n_bootstrap, seed=seed)
            record["knowledge"] = THREAT_MODELS[name]
            if name in self.notes:
                record["note"] = self.notes[name]
            out[name] = record
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` (atomically): ``indices``, ``labels``, ``classes``, ``attacks`` and
        per attack ``score_<name>`` (NaN = not evaluated) and ``threshold_<name>`` (NaN = none)."""
        from mcmia_helpers.io import atomic_write

        arrays = {"indices": self.indices, "labels": self.labels, "classes": self.classes,
                  "attacks": np.array(list(self.scores), dtype=str)}
        for name, s in self.scores.items():
            arrays[f"score_{name}"] = s
            t = self.thresholds.get(name)
            arrays[f"threshold_{name}"] = np.array(np.nan if t is None else t)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def defence_aware_models(ctx: "TargetContext", specs: Sequence[ShadowSpec]) -> list[nn.Module]:
    """Shadow models trained like the target, defence included: one per spec (its members and
    seed), each through the target's defence trainer on :func:`~mcmia_helpers.experiments.shadow_context`
    and cached like a target. Trained one after another (a defence is not batchable)."""
    from mcmia_helpers.experiments import DEFENSES, shadow_context

    models = []
    for spec in specs:
        model, _ = DEFENSES[ctx.spec.defense](shadow_context(ctx, spec.indices, spec.seed))
        models.append(model.cpu().eval())
    return models


def _logits_of(models: Sequence[nn.Module], ctx: "TargetContext", indices: torch.Tensor) -> torch.Tensor:
    return predict_logits_many(models, ctx.bundle, indices, device=ctx.device)


def compute_attack_scores(ctx: "TargetContext", model: nn.Module,
                          names: str | Iterable[str] | None = None, *,
                          lira_global_variance: bool | None = None,
                          cache: str | os.PathLike | None = None) -> AttackScores:
    """Run the attacks ``names`` (default: :func:`default_attacks`) against ``model``; return scores.

    Shadow and LiRA models are trained on ``ctx.device`` (together, see
    :mod:`mcmia_helpers.shadow`) or loaded from the cache. ``lira_global_variance`` defaults
    to ``n_lira_models < 64``. The defence-aware LiRA attacks use the same IN/OUT sets and
    seeds as plain LiRA, with shadow models from :func:`defence_aware_models` (for an
    undefended target they are the plain LiRA models), so the two differ only by the defence.
    """
    names = default_attacks(ctx.arch_scale) if names is None else validate_attack_names(names)
    scale = ctx.arch_scale
    if any(n in SHADOW_ATTACKS + METRIC_ATTACKS for n in names) and scale.n_shadow_models < 1:
        raise UserError(f"the shadow-model attacks need n_shadow_models >= 1 at scale "
                        f"'{ctx.spec.scale}': drop them from --attacks")
    if any(n in LIRA_ATTACKS + DEFENCE_AWARE_ATTACKS for n in names) and scale.n_lira_models < 2:
        raise UserError(f"LiRA needs n_lira_models >= 2 at scale '{ctx.spec.scale}': drop "
                        "the lira_* attacks from --attacks")
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
    need_lira = any(n in LIRA_ATTACKS for n in names) or (need_aware and ctx.spec.defense == "none")
    shadow_specs, shadow_in = shadow_model_specs(ctx) if need_shadow else ([], None)
    lira_specs, lira_in = lira_model_specs(ctx) if need_lira or need_aware else ([], None)
    plain_lira_specs = lira_specs if need_lira else []
    all_models, _ = load_or_train_models(_base_cache_config(ctx), attacker_builder(ctx), bundle,
                                         shadow_specs + plain_lira_specs, ctx.train_config,
                                         device=device, progress=ctx.progress, cache=cache)
    shadow_models, lira_models = all_models[:len(shadow_specs)], all_models[len(shadow_specs):]

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
        for name, featurise in (("shadow_top3", lambda lg, y: _sorted_top3_features(lg)),
                                ("shadow_label", _label_features)):
            if name in names:
                net = train_attack_classifier(featurise(flat_logits, flat_labels), flat_in,
                                              seed=_seed(ctx, 33))
                with torch.no_grad():
                    out.scores[name] = net(featurise(target_logits, eval_classes)).double().numpy()
                out.thresholds[name] = 0.0  # the attack network's own decision (p = 0.5)

    if "nasr_inference" in names:
        out.scores["nasr_inference"], out.notes["nasr_inference"] = _nasr_attack(ctx, model, target_logits,
                                                                                 eval_classes)
        out.thresholds["nasr_inference"] = 0.0

    if need_lira or need_aware:
        candidates = lira_candidates(ctx)
        to_sorted = torch.argsort(eval_idx)  # candidates == eval_idx[to_sorted]
        to_eval = torch.argsort(to_sorted).numpy()
        cand_labels = bundle.labels[candidates]
        target_cand = logit_confidence(target_logits[to_sorted], cand_labels)
        global_var = scale.n_lira_models < 64 if lira_global_variance is None else lira_global_variance
        variance = "global" if global_var else "per-example"

        def add_lira(models: Sequence[nn.Module], pairs: tuple[tuple[str, bool], ...], how: str) -> None:
            shadow_logits = _logits_of(models, ctx, candidates)  # (N, E, C)
            shadow_stats = logit_confidence(shadow_logits, cand_labels.expand(len(models), -1))
            for name, online in pairs:
                if name in names:
                    s = lira_scores(target_cand, shadow_stats, lira_in, online, global_var)
                    out.scores[name] = s[to_eval]
                    out.thresholds[name] = lira_threshold(shadow_stats, lira_in, online, global_var)
                    out.notes[name] = (f"{len(models)} shadow models{how}, {variance} variance; threshold "
                                       + ("leave-one-out on the shadow models"
                                          if out.thresholds[name] is not None
                                          else "not calibrated (fewer than 4 shadow models): oracle"))

        if any(n in LIRA_ATTACKS for n in names):
            add_lira(lira_models, (("lira_online", True), ("lira_offline", False)), "")
        if need_aware:
            aware = lira_models if ctx.spec.defense == "none" else defence_aware_models(ctx, lira_specs)
            add_lira(aware, (("lira_online_aware", True), ("lira_offline_aware", False)),
                     f" trained with the target's defence ({ctx.spec.defense}"
                     + "".join(f", {k}={v}" for k, v in sorted(ctx.spec.params.items())) + ")")
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


def nasr_sets(ctx: "TargetContext") -> NasrSets:
    """The seeded, disjoint training and evaluation sets of ``nasr_inference``."""
    split = ctx.split
    n_mem, n_non = len(split.members), len(split.nonmembers)
    gen = torch.Generator().manual_seed(_seed(ctx, 44))
    perm = torch.randperm(n_mem, generator=gen)
    known, held_out = perm[:n_mem // 2], perm[n_mem // 2:]
    n_eval = min(len(held_out), n_non)
    eval_non = torch.randperm(n_non, generator=gen)[:n_eval]
    n_ref = min(len(known), len(split.shadow_pool))
    reference = split.shadow_pool[torch.randperm(len(split.shadow_pool), generator=gen)[:n_ref]]
    return NasrSets(known.sort().values, held_out[:n_eval].sort().values, eval_non.sort().values,
                    reference.sort().values)


def _nasr_attack(ctx: "TargetContext", model: nn.Module, target_logits: torch.Tensor,
                 eval_classes: torch.Tensor) -> tuple[np.ndarray, str]:
    """Nasr et al.'s inference attack on the sets of :func:`nasr_sets`. Returns scores in the
    evaluation order (members, then non-members), NaN for examples not evaluated, and a note."""
    sets = nasr_sets(ctx)
    n_mem = len(ctx.split.members)
    ref_logits = predict_logits(model, ctx.bundle, sets.reference, device=ctx.device)
    probs = F.softmax(target_logits.float(), dim=-1)
    net = train_inference_model(probs[sets.known], eval_classes[sets.known],
                                F.softmax(ref_logits.float(), dim=-1), ctx.bundle.labels[sets.reference],
                                seed=_seed(ctx, 45))
    all_scores = inference_scores(net, target_logits, eval_classes)
    scores = np.full(len(all_scores), np.nan)
    evaluated = torch.cat([sets.held_out, n_mem + sets.eval_nonmembers]).numpy()
    scores[evaluated] = all_scores[evaluated]
    note = (f"trained on {len(sets.known)} known members vs {len(sets.reference)} reference "
            f"non-members (shadow pool); evaluated on the other {len(sets.held_out)} members vs "
            f"{len(sets.eval_nonmembers)} non-members")
    return scores, note


def run_attacks(ctx: "TargetContext", model: nn.Module, names: str | Iterable[str] | None = None, *,
                save_scores: str | os.PathLike | None = None, n_bootstrap: int = 200,
                cache: str | os.PathLike | None = None) -> dict[str, dict]:
    """Run membership inference attacks on ``model`` (the target of ``ctx``); return their metrics.

    Evaluates on ``ctx.split.members`` (label 1) vs ``ctx.split.nonmembers`` (label 0) and
    returns ``{name: attack_metrics(...) + {"knowledge", "note"?}}`` for each attack in
    ``names`` (a list or a comma-separated string; default: all that ``ctx.arch_scale``
    affords). ``save_scores`` writes the per-example scores as an ``.npz`` (see
    :meth:`AttackScores.save`).
    """
    scores = compute_attack_scores(ctx, model, names, cache=cache)
    if save_scores is not None:
        scores.save(save_scores)
    return scores.metrics(n_bootstrap=n_bootstrap, seed=int(ctx.spec.seed))
