"""RMIA (Zarifzadeh, Liu and Shokri, ICML 2024; issue 25): against the authors' code, and what it
must do: separate members where models leak, stay at chance where membership is random, and use
only OUT models offline.

The expected scores of the first three tests were produced once by running the authors'
published code on the fixture below (signals: the softmax probability of the true class):

- ``aggregate_signals`` of ``research/2024_rmia/main.py`` in privacytrustlab/ml_privacy_meter at
  commit d32734161a3395211fe5f3cd461932290b1fafbe (the code the paper's README points to),
  signal ``softmax_relative``, ``num_ref_models: 4``, ``gamma: 2.0``, ``offline_a: 0.3``,
  ``proportiontocut: 0.2`` (no model trimmed from 4), no augmentation, all 48 examples as
  queries, examples 24-47 as the population; its scores are ``-prediction``;
- ``run_rmia`` of ``modules/mia/attacks/rmia.py`` (the current library, commit
  e384af8fd9319b8eeb1303aa82474df1441e3c59, which thresholds at 1: gamma 1), offline with
  ``offline_a=0.3``, ``num_reference_models=4``, queries 0-23 and population 24-47, with no
  reference model trained on any of them.

Every score is a share of the 24 population samples (or of the 23 others), so the numbers are
stored as counts. The research code compares a query that is itself a population sample with
the others and then shifts its score by ``1 / 23`` (``(score * 24 - 1) / 23`` on the negated
score); ours leaves that query out of its own comparison (``z_of_x``), the same count without
the shift. The reference code is not part of the package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcmia_helpers.attacks.rmia import RMIA_GAMMA, rmia_scores, rmia_signal, tune_offline_a
from mcmia_helpers.metrics import auc
from mcmia_helpers.zoo.evaluate import attack_zoo, zoo_metrics
from mcmia_helpers.zoo.membership import membership_matrix, random_membership
from mcmia_helpers.zoo.train import Zoo

D, M, C = 48, 5, 4  # examples, models (4 references + the target, model 4), classes
MULTS = [5, 7]

#: ``research/2024_rmia`` scores x 24 for queries 0-23; x 23 for 24-47 (our count + 1: its shift).
RESEARCH = {
    "online": ([5, 3, 13, 6, 0, 13, 13, 0, 5, 16, 8, 0, 10, 13, 3, 5, 13, 2, 5, 14, 8, 0, 8, 14],
               [3, 1, 15, 14, 3, 6, 15, 8, 7, 14, 9, 3, 12, 14, 1, 1, 15, 10, 1, 8, 15, 6, 1, 14]),
    "offline": ([6, 2, 13, 5, 0, 13, 13, 0, 5, 13, 8, 0, 13, 13, 5, 5, 13, 2, 5, 13, 8, 0, 7, 14],
                [3, 1, 15, 12, 6, 6, 15, 6, 6, 15, 7, 4, 10, 14, 1, 1, 15, 12, 1, 6, 14, 6, 1, 14]),
}
#: ``modules/mia/attacks/rmia.py`` ``run_rmia`` scores x 24 (offline, gamma 1, a 0.3).
LIBRARY = [10, 7, 18, 8, 2, 17, 19, 2, 9, 24, 14, 0, 15, 17, 8, 8, 17, 5, 8, 17, 14, 0, 14, 24]


def _fixture():
    labels = np.arange(D) % C
    keep = np.zeros((M, D), dtype=bool)
    for k in range(2):
        half = (np.arange(D) * MULTS[k] + k) % D < D // 2
        keep[2 * k], keep[2 * k + 1] = half, ~half
    keep[4] = (np.arange(D) * 11 + 2) % D < D // 2
    m, e, c = np.meshgrid(np.arange(M), np.arange(D), np.arange(C), indexing="ij")
    logits = (1.5 * np.sin(1.3 * m + 2.9 * e + 1.7 * c)
              + (1.0 + 0.4 * np.cos(3.1 * e)) * (c == labels[e]) * (1 + keep[m, e]))
    sig = rmia_signal(torch.tensor(logits), torch.tensor(labels).expand(M, -1))
    return sig, torch.tensor(keep)


@pytest.mark.parametrize("setting", ["online", "offline"])
def test_rmia_matches_the_research_code(setting: str) -> None:
    sig, keep = _fixture()
    z_of_x = np.r_[-np.ones(24, dtype=int), np.arange(24)]
    ours = rmia_scores(sig[4], sig[:4], keep[:4], sig[4, 24:], sig[:4, 24:], keep[:4, 24:],
                       online=setting == "online", a=0.3, gamma=2.0, z_of_x=z_of_x)
    outside, inside = RESEARCH[setting]
    np.testing.assert_allclose(ours[:24] * 24, outside, atol=1e-9)
    np.testing.assert_allclose(ours[24:] * 23 + 1, inside, atol=1e-9)  # its shift


def test_rmia_offline_matches_the_current_library() -> None:
    sig, _ = _fixture()
    ours = rmia_scores(sig[4, :24], sig[:4, :24], torch.zeros(4, 24, dtype=torch.bool),
                       sig[4, 24:], sig[:4, 24:], None, online=False, a=0.3, gamma=1.0)
    np.testing.assert_allclose(ours * 24, LIBRARY, atol=1e-9)


def test_the_paper_settings_are_the_defaults() -> None:
    sig, keep = _fixture()
    args = (sig[4], sig[:4], keep[:4], sig[4, 24:], sig[:4, 24:], keep[:4, 24:])
    np.testing.assert_array_equal(rmia_scores(*args), rmia_scores(*args, a=0.3, gamma=2.0))
    assert RMIA_GAMMA == 2.0
    # gamma matters: at 1 the same queries get other scores
    assert not np.array_equal(rmia_scores(*args), rmia_scores(*args, gamma=1.0))


# --------------------------------------------------------------------------- behaviour


def _world(n_models: int, n_examples: int, leak: float, seed: int = 0):
    """Synthetic softmax probabilities of the true class: per-example difficulty, ``+leak`` on the
    logit scale when a model trained on the example (``leak=0``: membership leaves no trace).
    Returns a function drawing a model's signals for an IN mask, and the reference models'."""
    gen = torch.Generator().manual_seed(seed)
    difficulty = torch.randn(n_examples, generator=gen, dtype=torch.float64) * 2

    def draw(in_mask: torch.Tensor) -> torch.Tensor:
        noise = 0.5 * torch.randn(in_mask.shape, generator=gen, dtype=torch.float64)
        return torch.sigmoid(difficulty + leak * in_mask.double() + noise)

    in_mask = membership_matrix(n_models, n_examples, seed + 1)
    return draw, in_mask, draw(in_mask)


@pytest.mark.parametrize("online", [True, False])
def test_rmia_separates_members_where_models_overfit(online: bool) -> None:
    draw, ref_in, ref = _world(8, 600, leak=2.0)
    members = torch.arange(600) % 2 == 0
    target = draw(members)
    pop = np.arange(600)  # the queries are the population (as in a zoo)
    s = rmia_scores(target, ref, ref_in, target, ref, ref_in, online=online, z_of_x=pop)
    assert auc(members.numpy().astype(int), s) > 0.85
    # the raw signal, without Pr(x) from the reference models, is far weaker
    assert auc(members.numpy().astype(int), target.numpy()) < 0.75


@pytest.mark.parametrize("online", [True, False])
def test_rmia_is_at_chance_on_randomly_relabelled_membership(online: bool) -> None:
    """Scored against a membership drawn independently of what the target trained on, or on
    models that leave no trace of membership, RMIA's AUC is 0.5 up to noise (2,000 examples:
    standard error about 0.013)."""
    draw, ref_in, ref = _world(8, 2000, leak=2.0, seed=3)
    trained = torch.arange(2000) % 2 == 0
    relabelled = torch.randperm(2000, generator=torch.Generator().manual_seed(9)) < 1000
    target = draw(trained)
    s = rmia_scores(target, ref, ref_in, target, ref, ref_in, online=online, z_of_x=np.arange(2000))
    assert abs(auc(relabelled.numpy().astype(int), s) - 0.5) < 0.05
    assert auc(trained.numpy().astype(int), s) > 0.85  # the same scores, on the truth
    draw0, ref_in0, ref0 = _world(8, 2000, leak=0.0, seed=4)
    target0 = draw0(trained)
    s0 = rmia_scores(target0, ref0, ref_in0, target0, ref0, ref_in0, online=online,
                     z_of_x=np.arange(2000))
    assert abs(auc(trained.numpy().astype(int), s0) - 0.5) < 0.05


def test_offline_rmia_uses_out_models_only() -> None:
    """Changing what the reference models output on the examples they trained on (IN) leaves
    the offline scores and the tuned ``a`` unchanged; online they move."""
    draw, ref_in, ref = _world(8, 400, leak=2.0, seed=5)
    target = draw(torch.arange(400) % 3 == 0)
    other = torch.where(ref_in, torch.rand(ref.shape, generator=torch.Generator().manual_seed(1),
                                           dtype=torch.float64), ref)
    pop = np.arange(400)
    for online, same in ((False, True), (True, False)):
        a = rmia_scores(target, ref, ref_in, target, ref, ref_in, online=online, z_of_x=pop)
        b = rmia_scores(target, other, ref_in, target, other, ref_in, online=online, z_of_x=pop)
        assert np.array_equal(a, b) == same
    # tuning a scores model 0 against its own membership: its own IN outputs are the stand-in
    # target's signals (the target's, not a reference's), so only the references' are changed
    keep0 = other.clone()
    keep0[0] = ref[0]
    assert tune_offline_a(ref, ref_in, ref, ref_in, z_of_x=pop) == tune_offline_a(
        keep0, ref_in, keep0, ref_in, z_of_x=pop)


def test_a_query_is_not_compared_with_itself() -> None:
    """With ``gamma < 1`` a query's comparison with itself (LR = 1) would count; ``z_of_x``
    leaves it out and divides by the others."""
    target = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    ref = torch.full((2, 3), 0.5, dtype=torch.float64)
    ref_in = torch.tensor([[True, False, True], [False, True, False]])
    with_self = rmia_scores(target, ref, ref_in, target, ref, ref_in, gamma=0.9)
    without = rmia_scores(target, ref, ref_in, target, ref, ref_in, gamma=0.9, z_of_x=[0, 1, 2])
    np.testing.assert_allclose(with_self, [1.0, 2 / 3, 1 / 3])  # LR(x, z) > 0.9 counted over all z
    np.testing.assert_allclose(without, [1.0, 0.5, 0.0])


def _zoo(membership: torch.Tensor, leak: float, seed: int = 0) -> Zoo:
    """A synthetic zoo: 3-class logits, the true class ``+leak`` where a model trained on it."""
    n, p = membership.shape
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(p) % 3
    logits = torch.randn(n, p, 3, generator=gen)
    difficulty = torch.randn(p, generator=gen) * 1.5
    logits[:, torch.arange(p), labels] += difficulty + leak * membership.float()
    return Zoo(defense="none", params={}, logits=logits, membership=membership, labels=labels,
               canary=torch.zeros(p, dtype=torch.bool), test_acc=[0.0] * n,
               seeds=list(range(n)), keys=[""] * n)


@pytest.mark.parametrize("attack", ["rmia_online", "rmia_offline"])
def test_zoo_rmia_leaks_on_an_overfit_zoo_and_not_on_random_membership(attack: str) -> None:
    membership = membership_matrix(8, 400, 0)
    zoo = _zoo(membership, leak=2.5)
    zs = attack_zoo(attack, zoo, zoo)
    assert all(i not in [j for _, j in used] and (i ^ 1) not in [j for _, j in used]
               for i, used in enumerate(zs.shadows))
    assert "gamma = 2" in zs.note and ("a tuned" in zs.note) == (attack == "rmia_offline")
    pooled = zoo_metrics(zs, "all", n_bootstrap=0)["pooled"]
    assert pooled["auc"] > 0.8
    fake = _zoo(membership, leak=2.5)
    fake = Zoo(**{**fake.__dict__, "membership": random_membership(membership, seed=1)})
    control = zoo_metrics(attack_zoo(attack, fake, fake), "all", n_bootstrap=0)["pooled"]
    assert abs(control["auc"] - 0.5) < 0.04


def test_run_grid_and_zoo_accept_the_rmia_attacks() -> None:
    from mcmia_helpers.attacks.names import (DEFENCE_AWARE_ATTACKS, THREAT_MODELS, default_attacks,
                                             validate_attack_names)
    from mcmia_helpers.scales import get_scale
    from mcmia_helpers.validation import load_grid_text
    from mcmia_helpers.zoo.evaluate import zoo_attack_names

    names = ("rmia_online", "rmia_offline", "rmia_online_aware", "rmia_offline_aware")
    assert validate_attack_names(",".join(names)) == names
    assert zoo_attack_names(",".join(names)) == names
    assert all(THREAT_MODELS[n] for n in names)
    assert {"rmia_online_aware", "rmia_offline_aware"} <= set(DEFENCE_AWARE_ATTACKS)
    lenet = get_scale("ci").for_arch("lenet5")
    assert {"rmia_online", "rmia_offline"} <= set(default_attacks(lenet))
    grid = load_grid_text(b"scale: ci\nattacks: [rmia_online, rmia_offline_aware]\ncells:\n"
                          b"  - {arch: lenet5, dataset: mnist, defenses: [{defense: none}]}\n", "g.yaml")
    assert grid["attacks"] == ["rmia_online", "rmia_offline_aware"]
