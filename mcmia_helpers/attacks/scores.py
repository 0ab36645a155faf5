"""Membership signals: per-example scores from a model's logits (higher = more likely a member).

The metric attacks of chapter 1 (loss, confidence, entropy, modified entropy, correctness),
LiRA's logit-scaled confidence, and the threshold calibrated on shadow models that turns a score
into a yes/no decision.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mcmia_helpers.metrics import best_threshold


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in float64 (the metric scores and the attack features start from it)."""
    return F.log_softmax(logits.double(), dim=-1)


def true_class_value(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The entry of ``x`` (..., C) at each example's true class ``labels`` (...)."""
    return x.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def loss_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``-cross-entropy``: Yeom et al.'s loss attack (members have low loss)."""
    return true_class_value(log_probs(logits), labels).numpy()


def confidence_score(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """The largest softmax probability (label-free), as its log for resolution near 1."""
    return log_probs(logits).max(-1).values.numpy()


def entropy_score(logits: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """``-entropy`` of the softmax output (label-free): members get confident outputs."""
    logp = log_probs(logits)
    return (logp.exp() * logp).sum(-1).numpy()


def modified_entropy_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``-Mentr`` of Song and Mittal (2021):
    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``, low for members."""
    logp = log_probs(logits)
    p = logp.exp()
    log1mp = torch.log1p(-p.clamp(max=1 - 1e-16))
    onehot = F.one_hot(labels.long(), p.shape[-1]).bool()
    p_y, logp_y = true_class_value(p, labels), true_class_value(logp, labels)
    other = torch.where(onehot, torch.zeros_like(p), p * log1mp).sum(-1)
    mentr = -(1 - p_y) * logp_y - other
    return (-mentr).numpy()


def correctness_score(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """1 when the prediction is correct, else 0 (the gap attack)."""
    return (logits.argmax(-1) == labels).double().numpy()


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """LiRA's statistic ``log(p_y / (1 - p_y))``, computed stably from the logits."""
    z = logits.double()
    z_y = true_class_value(z, labels)
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
