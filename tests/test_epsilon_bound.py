"""The epsilon lower bound from a zoo's canaries (issue 25, items 4 and 6).

Synthetic scores for the statistics (mechanisms of known epsilon: randomized response and the
Laplace mechanism on each example's membership bit), one hand-computed Clopper-Pearson case,
the rule chosen on other targets than those evaluated, and one tiny real zoo (4 LeNet-5 models
on 400 Fashion-MNIST examples with 100 canaries, about 20 s) for the record field.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcmia_helpers.errors import UserError
from mcmia_helpers.zoo import ZooSpec, membership_matrix, random_membership, run_zoo
from mcmia_helpers.zoo import epsilon as E

POOL, CANARIES, MODELS = 1000, 100, 8


def _canaries(rng: np.random.Generator, pool: int = POOL, m: int = CANARIES) -> np.ndarray:
    canary = np.zeros(pool, dtype=bool)
    canary[rng.choice(pool, m, replace=False)] = True
    return canary


def _randomized_response(member: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """Each example's membership bit, told truthfully with probability e^eps / (1 + e^eps):
    eps-DP for adding or removing one example (its own bit is all that changes)."""
    truthful = rng.random(member.shape) < 1 / (1 + math.exp(-eps))
    return np.where(truthful, member, ~member).astype(float) + 1e-3 * rng.random(member.shape)


# --------------------------------------------------------------------------- the statistics


def test_hand_computed_clopper_pearson_cases() -> None:
    # 10 correct guesses out of 10: the one-sided 95% lower bound solves q^10 = 0.05, so
    # q = 0.05 ** 0.1 = 0.741134 and epsilon = log(q / (1 - q)) = log(2.86297) = 1.051873
    assert E.clopper_pearson_lower(10, 10, 0.05) == pytest.approx(0.741134, abs=1e-6)
    assert E.one_run_epsilon(10, 10, 10, 0.0, 0.05) == pytest.approx(1.051873, abs=1e-6)
    # 7 of 10: the exact 90% two-sided interval of the tables, (0.3933, 0.9127)
    assert E.clopper_pearson_lower(7, 10, 0.05) == pytest.approx(0.3933, abs=1e-4)
    assert E.clopper_pearson_upper(7, 10, 0.05) == pytest.approx(0.9127, abs=1e-4)
    assert E.clopper_pearson_lower(0, 10, 0.05) == 0.0
    assert E.clopper_pearson_upper(10, 10, 0.05) == 1.0


@pytest.mark.parametrize("r,v", [(10, 10), (50, 40), (200, 130), (1000, 540)])
def test_without_delta_the_audit_is_the_logit_of_the_clopper_pearson_bound(r: int, v: int) -> None:
    low = E.clopper_pearson_lower(v, r, 0.05)
    assert E.one_run_epsilon(r, r, v, 0.0, 0.05) == pytest.approx(math.log(low / (1 - low)),
                                                                   abs=1e-6)


def test_half_right_guesses_and_delta_give_no_or_smaller_bounds() -> None:
    assert E.one_run_epsilon(100, 100, 50, 0.0, 0.05) == 0.0
    pure = E.one_run_epsilon(1000, 200, 180, 0.0, 0.05)
    assert 0 < E.one_run_epsilon(1000, 200, 180, 1e-5, 0.05) < pure
    assert E.one_run_p_value(1000, 200, 180, 1.0, 1e-5) > E.one_run_p_value(1000, 200, 180, 1.0, 0)


def test_the_one_run_audit_holds_and_is_tight_on_randomized_response() -> None:
    """Fair coins, eps-DP randomized response: the 95% bound exceeds eps in about 5% of runs
    at most, and with 2,000 guesses it comes within 20% of eps."""
    for eps in (0.5, 1.0, 3.0):
        q = 1 / (1 + math.exp(-eps))
        correct = [int((np.random.default_rng(s).random(2000) < q).sum()) for s in range(200)]
        bounds = [E.one_run_epsilon(2000, 2000, v, 0.0, 0.05) for v in correct]
        assert np.mean(np.array(bounds) > eps) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
        assert np.mean(bounds) >= 0.8 * eps


def test_zoo_coins_cost_the_prior_odds_and_a_factor_two() -> None:
    log_rho, p_max = E.zoo_coin_parameters(POOL, CANARIES)
    assert log_rho == pytest.approx(math.log(500 / 401)) and p_max == pytest.approx(500 / 901)
    fair = E.one_run_epsilon(CANARIES, 50, 50, 0.0, 0.01)
    assert E.zoo_epsilon(POOL, CANARIES, 50, 50, 0.0, 0.01) == pytest.approx((fair - log_rho) / 2,
                                                                             abs=1e-9)
    assert E.zoo_p_value(POOL, CANARIES, 50, 45, 0.3, 1e-4) == pytest.approx(
        E.one_run_p_value(CANARIES, 50, 45, 0.6 + log_rho, 2 * p_max * (1 + math.exp(0.3)) * 1e-4))
    with pytest.raises(ValueError):
        E.zoo_coin_parameters(10, 6)


# --------------------------------------------------------------------------- on zoo-shaped scores


@pytest.mark.parametrize("eps", [1.0, 2.0, 4.0, 8.0])
def test_bound_never_exceeds_the_epsilon_of_a_dp_fixture(eps: float) -> None:
    """Scores from eps-DP mechanisms (randomized response, Laplace) on the zoo's own halves."""
    m = membership_matrix(MODELS, POOL, seed=1).numpy()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        canary = _canaries(rng)
        for scores in (_randomized_response(m, eps, rng), m + rng.laplace(0, 1 / eps, m.shape)):
            bound = E.canary_epsilon_bound(scores, m, canary, delta=0.0)
            assert 0 <= bound["value"] <= min(eps, bound["max_auditable"])
    assert bound["value"] > 0  # the fixture leaks enough to be audited at all


def test_bound_is_zero_on_random_membership() -> None:
    """Scores that separate the true members, judged against membership drawn independently
    (the control of test_zoo): the bound is reported as 0 in every draw."""
    m = membership_matrix(MODELS, POOL, seed=2)
    for seed in range(15):
        rng = np.random.default_rng(seed)
        scores = m.numpy() * 3.0 + rng.normal(size=m.shape)
        fake = random_membership(m, seed).numpy()
        bound = E.canary_epsilon_bound(scores, fake, _canaries(rng), delta=1e-4)
        assert bound["value"] == 0.0 and bound["target"] is None
        assert E.canary_epsilon_bound(scores, m.numpy(), _canaries(rng), delta=1e-4)["value"] > 0


def test_bound_grows_with_separation() -> None:
    m = membership_matrix(MODELS, POOL, seed=3).numpy()
    means = []
    for shift in (0.0, 0.5, 1.0, 2.0, 4.0):
        values = []
        for seed in range(5):
            rng = np.random.default_rng(seed)
            values.append(E.canary_epsilon_bound(m * shift + rng.normal(size=m.shape), m,
                                                 _canaries(rng), delta=1e-4)["value"])
        means.append(np.mean(values))
    assert means[0] == 0.0
    assert all(b > a for a, b in zip(means, means[1:]))


def test_the_rule_is_chosen_on_the_other_half_of_the_targets() -> None:
    """Half 0's targets leak only at the top (their 100 highest-scored canaries are members;
    100 non-members parked just below them leave 100 members and 100 non-members of equal
    scores at the bottom), half 1's only at the bottom (mirrored). Each half's own best rule
    would give a large bound; chosen on the other half, the rule looks where that half's
    targets do not leak, and the bound is 0. Chosen on the same targets, it would not be."""
    pool, m_can, n = 4000, 400, 8
    membership = membership_matrix(n, pool, seed=4).numpy()
    rng = np.random.default_rng(0)
    canary = _canaries(rng, pool, m_can)
    scores = rng.normal(size=membership.shape)
    half = E.halves(n)
    cols = np.flatnonzero(canary)
    for i in range(n):  # 200 members and 200 non-members among the canaries of each target
        members = rng.permutation(cols[membership[i, cols]])
        others = rng.permutation(cols[~membership[i, cols]])
        sign = 1.0 if half[i] == 0 else -1.0
        leaking, parked = (members, others) if half[i] == 0 else (others, members)
        scores[i, leaking[:100]] += sign * 10.0  # 100 sure guesses at one end
        scores[i, parked[:100]] += sign * 5.0  # out of the way: the other end stays balanced
    bound = E.canary_epsilon_bound(scores, membership, canary, delta=1e-5)
    assert bound["value"] == 0.0
    assert bound["rules"]["half_0"]["chosen_on_targets"] == [2, 3, 6, 7]
    assert bound["rules"]["half_0"]["k_minus"] > 0 and bound["rules"]["half_1"]["k_plus"] > 0
    beta = 0.05 / n
    for h in (0, 1):  # the choice on a half's own targets would have found its leak
        own = half == h
        s, mem = scores[own][:, canary], membership[own][:, canary]
        rule = E.choose_rule(s, mem, pool, 1e-5, beta)
        k_plus, k_minus = E.rule_counts(rule, m_can)
        r, v = E.guesses(s[0], mem[0], k_plus, k_minus)
        assert E.zoo_epsilon(pool, m_can, r, v, 1e-5, beta) > 1.0


def test_guesses_break_ties_by_position_and_count_both_sides() -> None:
    scores = np.array([3.0, 1.0, 1.0, 1.0, -2.0])
    member = np.array([True, False, True, False, False])
    assert E.guesses(scores, member, 1, 1) == (2, 2)
    assert E.guesses(scores, member, 2, 0) == (2, 1)  # the tie goes to position 1 (a non-member)
    assert E.rule_counts((1 / 16, 0.0), 5) == (1, 0) and E.rule_counts((0.5, 0.5), 3) == (2, 1)


def test_bad_input_is_one_line() -> None:
    m = membership_matrix(4, 8, seed=0).numpy()
    with pytest.raises(UserError, match="canaries"):
        E.canary_epsilon_bound(np.zeros((4, 8)), m, np.zeros(8, dtype=bool), delta=0.0)
    with pytest.raises(UserError, match="confidence"):
        E.canary_epsilon_bound(np.zeros((4, 8)), m, np.ones(8, dtype=bool) & (np.arange(8) < 2),
                               delta=0.0, confidence=1.0)
    with pytest.raises(UserError, match="even number of targets"):
        E.halves(2)


def test_accountant_is_read_from_the_dp_zoo_and_stated_beside_the_bound() -> None:
    m = membership_matrix(4, POOL, seed=5).numpy()
    rng = np.random.default_rng(5)
    canary = _canaries(rng)
    scores = _randomized_response(m, 8.0, rng)
    extras = [{"epsilon": 7.9 + i / 100, "delta": 1e-4, "noise_multiplier": 0.5} for i in range(4)]
    dp = E.zoo_epsilon_bound(scores, m, canary, defense="dp", extras=extras)
    assert dp["accountant_epsilon"] == pytest.approx(7.93) and dp["delta"] == 1e-4
    assert 0 < dp["value"] <= dp["accountant_epsilon"]
    dense = E.zoo_epsilon_bound(scores, m, canary, defense="none", extras=[{}] * 4)
    assert dense["accountant_epsilon"] is None and dense["delta"] == 1e-4  # default_delta(500)
    assert "cannot have less than" in dense["reading"]
    assert E.zoo_epsilon_bound(scores, m, np.zeros(POOL, bool), defense="none", extras=[]) is None
    with pytest.raises(UserError, match="accountant"):
        E.zoo_epsilon_bound(scores, m, canary, defense="dp", extras=[{}] * 4)


# --------------------------------------------------------------------------- a real zoo


def test_a_tiny_real_zoo_records_the_bound(tmp_path, monkeypatch) -> None:
    """4 LeNet-5 models (ci recipe) on 400 Fashion-MNIST examples, 100 of them canaries: the
    record states a bound for every attack, recomputable from its own per-target counts."""
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))
    spec = ZooSpec("lenet5", "fashion-mnist", scale="ci", n_models=4, pool=400, canaries=100)
    record = run_zoo(spec, "lira_online,loss", n_bootstrap=0)
    bounds = record["epsilon_lower_bound"]
    assert set(bounds) == {"lira_online", "loss"}
    for b in bounds.values():
        assert b["canaries"] == 100 and b["targets"] == 4 and b["delta"] == 1e-4
        assert b["confidence"] == 0.95 and b["accountant_epsilon"] is None
        assert b["value"] == max(b["per_target"]) >= 0
        beta = (1 - b["confidence"]) / b["targets"]
        assert b["per_target"] == [E.zoo_epsilon(400, 100, r, v, 1e-4, beta)
                                   for r, v in zip(b["guesses"], b["correct"])]
    assert bounds["lira_online"]["value"] > 0  # dense LeNet-5 memorises mislabelled canaries
    ceiling = max(E.zoo_epsilon(400, 100, r, r, 1e-4, 0.05 / 4) for r in range(1, 101))
    assert bounds["lira_online"]["max_auditable"] == pytest.approx(ceiling)
