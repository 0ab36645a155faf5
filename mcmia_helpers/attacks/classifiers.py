"""Attack classifiers: networks that learn membership from a model's outputs.

The shadow-model attack of Shokri et al. (2017) with ML-Leaks features (Salem et al. 2019), and
Nasr et al.'s (2018) inference model (the network itself, :class:`~mcmia_helpers.models.InferenceModel`,
lives with the models because the Min-Max defence trains against it too).

Both attacks standardise their features with the mean and spread of their own training set
(``_StandardisedMLP``, :class:`StandardisedInference`). Before issue 25 only the shadow
attack did: Nasr's posterior features (probabilities in [0, 1], log-probabilities scaled to
[-1, 0]) went in raw, and with 50 known members against 50 reference non-members (the
``overfit_target`` fixture of ``tests/test_attacks.py``) the attack network learnt next to
nothing (AUC 0.47; the shadow attack 0.69 on the same target).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcmia_helpers.attacks.scores import log_probs, true_class_value
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import LOG_PROB_FLOOR, InferenceModel


def top3_features(logits: torch.Tensor) -> torch.Tensor:
    """ML-Leaks features: the three largest log-probabilities, sorted (label-free)."""
    logp = log_probs(logits).clamp_min(math.log(LOG_PROB_FLOOR))
    k = min(3, logp.shape[-1])
    return logp.topk(k, dim=-1).values.float()


def label_features(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Label-conditioned features: true-class log-probability, top 3, correctness, one-hot label."""
    logp = log_probs(logits).clamp_min(math.log(LOG_PROB_FLOOR))
    correct = (logits.argmax(-1) == labels).double().unsqueeze(-1)
    onehot = F.one_hot(labels.long(), logits.shape[-1]).double()
    return torch.cat([true_class_value(logp, labels).unsqueeze(-1), top3_features(logits).double(),
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


def _posterior_features(net: InferenceModel, probs: torch.Tensor) -> torch.Tensor:
    """The posterior branch's input of ``net``: the probabilities, and with ``log_features``
    their log (floored, scaled to [-1, 0]), as :meth:`InferenceModel.forward` builds it."""
    if not net.log_features:
        return probs
    return torch.cat([probs, torch.log(probs + LOG_PROB_FLOOR) / -math.log(LOG_PROB_FLOOR)], dim=-1)


class StandardisedInference(nn.Module):
    """Nasr et al.'s inference model on *standardised* posterior features: each feature of
    ``_posterior_features`` minus its mean over the training set, divided by its spread
    (as the shadow attack's network does), then the model's posterior, label and joint layers.
    ``forward(probs, onehot)`` is :class:`~mcmia_helpers.models.InferenceModel`'s."""

    def __init__(self, net: InferenceModel, probs: torch.Tensor):
        super().__init__()
        self.net = net
        features = _posterior_features(net, probs.float())
        self.register_buffer("mean", features.mean(0))
        self.register_buffer("std", features.std(0).clamp_min(1e-6))

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Membership logits of ``(probs, onehot)`` pairs, features standardised first."""
        x = (_posterior_features(self.net, probs) - self.mean) / self.std
        h = torch.cat([self.net.posterior(x), self.net.label(onehot.to(probs.dtype))], dim=-1)
        return self.net.joint(h).squeeze(-1)


def train_inference_model(model_probs_members: torch.Tensor, labels_members: torch.Tensor,
                          probs_nonmembers: torch.Tensor, labels_nonmembers: torch.Tensor,
                          epochs: int = 30, seed: int = 0, *, hidden: int = 64, lr: float = 1e-3,
                          batch_size: int = 64, weight_decay: float = 1e-4,
                          standardise: bool = True) -> nn.Module:
    """Train Nasr et al.'s inference model on softmax outputs of known members vs non-members.

    ``*_probs`` are ``(N, C)`` softmax outputs of the model under attack, ``labels_*`` the true
    class indices ``(N,)``. Classes are re-weighted if the two sets differ in size. With
    ``standardise`` (the default) the posterior features are standardised on this training set
    (:class:`StandardisedInference`); ``False`` is the bare
    :class:`~mcmia_helpers.models.InferenceModel` (the attack before issue 25). Returns the
    network in eval mode, on the CPU; either is called as ``net(probs, onehot)``.
    """
    probs = torch.cat([model_probs_members, probs_nonmembers]).float().cpu()
    labels = torch.cat([labels_members, labels_nonmembers]).long().cpu()
    num_classes = probs.shape[1]
    target = torch.cat([torch.ones(len(model_probs_members)), torch.zeros(len(probs_nonmembers))])
    torch.manual_seed(seed)
    net: nn.Module = InferenceModel(num_classes, hidden)
    if standardise:
        net = StandardisedInference(net, probs)
    onehot = F.one_hot(labels, num_classes).float()
    return _train_binary(net, [probs, onehot], target, epochs, seed, lr, batch_size, weight_decay)


@torch.no_grad()
def inference_scores(net: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The inference model's membership logits for target logits and true labels."""
    probs = F.softmax(logits.float(), dim=-1)
    return net(probs, F.one_hot(labels.long(), probs.shape[1]).float()).double().numpy()
