"""Empirical epsilon from a zoo's canaries: the smallest epsilon the measured guesses allow.

Differential privacy bounds every membership test: a mechanism that is (epsilon, delta)-DP
cannot be told apart from its neighbour better than its guarantee allows, so a test that does
better *proves* that the mechanism is not (epsilon, delta)-DP for any smaller epsilon
(Jagielski, Ullman and Oprea 2020; Nasr et al. 2021). Chapter 4 compares measured leakage
with DP's *upper* bound; this module turns the canaries' scores into the *lower* bound: for a
DP-SGD zoo it is reported next to the accountant's epsilon (it must stay below it), for a
dense, pruned or Min-Max zoo it is "the epsilon this training cannot have less than".

**Method: one-run auditing, per target** (Steinke, Nasr and Jagielski, "Privacy Auditing with
One (1) Training Run", NeurIPS 2023). Scores of one model are not independent trials: one
model that memorises much flags many canaries at once, so a Clopper-Pearson interval that counts
every (model, canary) score as a trial would be too narrow. Steinke et al. audit *one* model
with many canaries, each included at random, by counting the correct guesses of an auditor that
guesses IN for the ``k+`` highest-scored canaries, OUT for the ``k-`` lowest and abstains on the
rest: under (epsilon, delta)-DP the number ``v`` of correct guesses among the ``r = k+ + k-``
made is at most ``Binomial(r, e^eps / (1 + e^eps))`` plus a delta term (their main theorem;
:func:`one_run_p_value` is the p-value they compute from it, :func:`one_run_epsilon` the largest
epsilon it rejects at level ``beta``). The guesses may be any function of what the auditor sees;
the analysis runs over the canaries one by one, conditioned on the guesses and on the previous
canaries' membership, so it needs no independence between the canaries' scores. With
``delta = 0`` it is the logit of the one-sided Clopper-Pearson lower bound on the guesses'
accuracy.

**The assumptions it rests on**, which the zoo meets by construction: the canaries and their
wrong labels are drawn before and apart from the membership
(:func:`~mcmia_helpers.zoo.membership.draw_pool`, then
:func:`~mcmia_helpers.zoo.membership.membership_matrix` from its own seed); each pair's half and
each model's seed are drawn independently of the other pairs'; the scores of target ``i`` use
no model trained on the complement of its half.

**What a zoo adds, and what it costs.** Target ``i``'s scores come from model ``i`` and (LiRA)
its shadow models, the models of the *other* pairs (its complementary partner is left out,
:mod:`~mcmia_helpers.zoo.evaluate`); the other pairs' halves and seeds are drawn independently of
target ``i``'s half, so they are side information that the DP guarantee of model ``i`` still
covers. Two facts of the zoo's design change the analysis (:func:`zoo_coin_parameters`):

* *replace-one neighbours*: every model trains on exactly ``P / 2`` of the ``P`` pool examples,
  so a canary IN and a canary OUT are datasets that differ by one example *swapped* for another
  (couple the rest by adding one uniformly drawn example). The accountant's (epsilon, delta) is
  add/remove DP, which gives ``(2 eps, (1 + e^eps) delta)`` for a swap (group privacy of 2);
* *not quite fair coins*: given the previous canaries' membership (the order of the canaries is
  fixed in advance), a canary is IN with probability between ``(P/2 - m + 1) / (P - m + 1)`` and
  ``(P/2) / (P - m + 1)`` for ``m`` canaries, not exactly 1/2: prior odds at most
  ``rho = (P/2) / (P/2 - m + 1)``.

Both enter as Steinke et al.'s analysis enters each canary: through the bound
``Pr[S_j = 1, A | past] <= e^eps' Pr[S_j = 0, A | past] + delta'/2`` (and with 0 and 1
swapped), which a fair coin of an (eps', delta')-DP mechanism satisfies and which here holds
with ``eps' = 2 eps + log rho`` and ``delta' = 2 p_max (1 + e^eps) delta``, ``p_max = rho /
(1 + rho)``. The audited epsilon is the largest add/remove epsilon whose ``(eps', delta')``
the guesses reject (:func:`zoo_epsilon`). The mapping is exact for the binomial (pure-DP) part;
for the delta term it assumes, as we read their proof, that it uses nothing but this per-canary
bound. The price: a zoo can never audit more than about half of the epsilon that a fresh
add/remove experiment could, and ``log rho`` (0.22 for the ``ci`` zoo: 100 canaries in a pool of
1,000) is subtracted before halving.

**Many targets, one statement.** Targets cannot be pooled into one binomial: target ``i``'s
shadow models include every other target's complementary partner, which reveals that target's
halves. Each target is therefore audited on its own, at level ``beta / N`` for ``N`` targets
(Bonferroni), so that the reported value, the largest per-target bound, holds at confidence
``1 - beta`` for all targets together.

**The guess rule is chosen on other targets.** Picking ``(k+, k-)`` to maximise the bound on the
very guesses it is evaluated on is a multiple test that overstates the bound. The pairs of
targets are split in two halves (pair ``k`` in half ``k mod 2``); the rule of a half is the one
of ``RULES`` with the largest mean bound on the *other* half's targets, and each half is
evaluated with the rule chosen on the other. The choice uses the other half's scores, whose
shadow models include the evaluated targets' models and partners: that dependence (on one of
``RULES``, 35 options, through pooled shadow statistics) is the one step the theorem does not
cover; a union bound over the rules would, at confidence ``1 - 35 beta``.

Delta: the DP zoo's own (the accountant's); for other zoos ``default_delta`` of the members
per model, the delta a DP zoo of the same size would use.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import product
from typing import Any, Sequence

import numpy as np
from scipy import stats

from mcmia_helpers.defences.dp import default_delta
from mcmia_helpers.errors import UserError

#: The reported confidence (the Bonferroni-corrected statement over all targets).
DEFAULT_CONFIDENCE = 0.95
#: Guess rules ``(k+ / m, k- / m)``: the shares of the ``m`` canaries guessed IN (highest
#: scores) and OUT (lowest scores); the rest are abstentions.
_SHARES = (0.0, 1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2)
RULES: tuple[tuple[float, float], ...] = tuple(
    (a, b) for a, b in product(_SHARES, _SHARES) if 0 < a + b <= 1 + 1e-12)
METHOD = ("one-run audit (Steinke, Nasr and Jagielski 2023) per target, replace-one and "
          "prior-odds corrections of the zoo's fixed-size halves, Bonferroni over targets, "
          "guess rule chosen on the other half of the pairs of targets")
_EPS_MAX = 60.0
_BISECT = 36


# --------------------------------------------------------------------------- the statistics


def clopper_pearson_lower(successes: int, trials: int, beta: float) -> float:
    """The one-sided ``1 - beta`` Clopper-Pearson lower bound on a binomial success rate."""
    if successes <= 0:
        return 0.0
    return float(stats.beta.ppf(beta, successes, trials - successes + 1))


def clopper_pearson_upper(successes: int, trials: int, beta: float) -> float:
    """The one-sided ``1 - beta`` Clopper-Pearson upper bound on a binomial success rate."""
    if successes >= trials:
        return 1.0
    return float(stats.beta.ppf(1 - beta, successes + 1, trials - successes))


def one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke et al.'s p-value: the chance of ``v`` or more correct guesses among ``r`` (out of
    ``m`` randomised canaries) from an (eps, delta)-DP mechanism with fair coins.

    ``P[Binomial(r, q) >= v] + 2 m delta max_i P[v - i <= Binomial(r, q) < v] / i`` with
    ``q = e^eps / (1 + e^eps)``, capped at 1 (their Theorem 3.1 and its code).
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))
    p = float(stats.binom.sf(v - 1, r, q))
    if delta > 0 and v > 0:
        below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
        p += float(np.max(below / np.arange(1, v + 1))) * 2 * m * delta
    return min(p, 1.0)


def _largest_rejected(p_value, beta: float) -> float:
    """``sup {eps >= 0: p_value(eps) < beta}`` by bisection (0 when even eps = 0 is not
    rejected); ``p_value`` increases with eps."""
    if p_value(0.0) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(hi) < beta:
        lo, hi = hi, 2 * hi
        if hi > _EPS_MAX:
            return _EPS_MAX
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        if p_value(mid) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_epsilon(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest epsilon that ``v`` correct guesses out of ``r`` reject at level ``beta``
    (fair coins, add/remove neighbours: Steinke et al.'s audit of one run)."""
    return _largest_rejected(lambda e: one_run_p_value(m, r, v, e, delta), beta)


def zoo_coin_parameters(pool: int, canaries: int) -> tuple[float, float]:
    """``(log rho, p_max)`` of a zoo's canary coins (see the module docstring): the largest
    prior log-odds of a canary's membership given the previous canaries', and the largest
    prior probability, for ``canaries`` canaries in a fixed-size half of ``pool`` examples."""
    half = pool // 2
    if canaries < 1 or canaries > half:
        raise ValueError(f"{canaries} canaries do not fit a half of a pool of {pool}")
    rho = half / (half - canaries + 1)
    return math.log(rho), rho / (1 + rho)


def zoo_p_value(pool: int, m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The p-value of ``v`` correct guesses out of ``r`` on the ``m`` canaries of one zoo target
    (a fixed-size half of ``pool``) under add/remove (eps, delta)-DP: the one-run p-value at
    ``eps' = 2 eps + log rho`` and ``delta' = 2 p_max (1 + e^eps) delta``."""
    log_rho, p_max = zoo_coin_parameters(pool, m)
    return one_run_p_value(m, r, v, 2 * eps + log_rho, 2 * p_max * (1 + math.exp(eps)) * delta)


@lru_cache(maxsize=65536)
def zoo_epsilon(pool: int, m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest add/remove epsilon that ``v`` correct guesses out of ``r`` on the ``m``
    canaries of one zoo target reject at level ``beta`` (:func:`zoo_p_value`)."""
    return _largest_rejected(lambda e: zoo_p_value(pool, m, r, v, e, delta), beta)


# --------------------------------------------------------------------------- guesses


def rule_counts(rule: tuple[float, float], m: int) -> tuple[int, int]:
    """``(k+, k-)`` of a rule of ``RULES`` for ``m`` canaries (a positive share guesses at
    least one canary)."""
    k_plus, k_minus = (0 if s == 0 else max(1, int(round(s * m))) for s in rule)
    while k_plus + k_minus > m:  # a tiny m: never guess a canary twice
        if k_minus >= k_plus:
            k_minus -= 1
        else:
            k_plus -= 1
    return k_plus, k_minus


def guesses(scores: np.ndarray, member: np.ndarray, k_plus: int, k_minus: int) -> tuple[int, int]:
    """``(r, v)``: guesses made and correct when the ``k_plus`` highest ``scores`` are guessed IN
    and the ``k_minus`` lowest OUT. Ties are broken by position (never by membership)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    member = np.asarray(member, dtype=bool)
    top, bottom = order[:k_plus], order[len(order) - k_minus:] if k_minus else order[:0]
    return k_plus + k_minus, int(member[top].sum() + (~member[bottom]).sum())


def _target_bounds(scores: np.ndarray, member: np.ndarray, rule: tuple[float, float], pool: int,
                   delta: float, beta: float) -> tuple[list[float], list[int], list[int]]:
    m = scores.shape[1]
    k_plus, k_minus = rule_counts(rule, m)
    rv = [guesses(scores[i], member[i], k_plus, k_minus) for i in range(len(scores))]
    return ([zoo_epsilon(pool, m, r, v, float(delta), float(beta)) for r, v in rv],
            [r for r, _ in rv], [v for _, v in rv])


def halves(n_targets: int) -> np.ndarray:
    """Each target's half: pair ``k`` (targets ``2k``, ``2k + 1``) in half ``k mod 2``."""
    if n_targets < 4 or n_targets % 2:
        raise UserError(f"an epsilon audit needs an even number of targets >= 4 (two pairs, one to "
                        f"choose the guess rule, one to evaluate it), not {n_targets}")
    return (np.arange(n_targets) // 2) % 2


def choose_rule(scores: np.ndarray, member: np.ndarray, pool: int, delta: float,
                beta: float, rules: Sequence[tuple[float, float]] = RULES) -> tuple[float, float]:
    """The rule with the largest mean bound over these targets; ties (often: all 0) go to the
    smallest mean p-value at epsilon 0 (the strongest evidence of any leak), then to the first."""
    m = scores.shape[1]
    keys = []
    for rule in rules:
        bounds, rs, vs = _target_bounds(scores, member, rule, pool, delta, beta)
        p0 = np.mean([zoo_p_value(pool, m, r, v, 0.0, delta) for r, v in zip(rs, vs)])
        keys.append((float(np.mean(bounds)), -float(p0)))
    best = max(range(len(rules)), key=lambda j: (keys[j], -j))
    return tuple(rules[best])


# --------------------------------------------------------------------------- the audit


def canary_epsilon_bound(scores: np.ndarray, membership: np.ndarray, canary: np.ndarray, *,
                         delta: float, confidence: float = DEFAULT_CONFIDENCE,
                         rules: Sequence[tuple[float, float]] = RULES) -> dict[str, Any]:
    """The audited epsilon lower bound of one attack on a zoo (see the module docstring).

    ``scores`` ``(N, P)`` (higher = member), ``membership`` ``(N, P)`` (complementary pairs of
    fixed-size halves), ``canary`` ``(P,)``. Returns ``value`` (the largest per-target bound,
    valid for all targets at once at ``confidence``), ``per_target``, the guesses made and
    correct per target, the rule chosen for each half, ``max_auditable`` (the bound if every
    guess of the best rule were right: no attack can show more with these canaries and
    targets) and the parameters of the statement.
    """
    scores = np.asarray(scores, dtype=np.float64)
    membership = np.asarray(membership, dtype=bool)
    canary = np.asarray(canary, dtype=bool)
    n, pool = scores.shape
    m = int(canary.sum())
    if membership.shape != scores.shape or canary.shape != (pool,):
        raise ValueError("scores, membership and canary do not describe one zoo")
    if m < 1:
        raise UserError("an epsilon audit needs canaries: use e.g. --canaries 100")
    if not 0 < confidence < 1:
        raise UserError(f"confidence {confidence} is not in (0, 1): use e.g. 0.95")
    if not 0 <= delta < 1:
        raise UserError(f"delta {delta} is not in [0, 1): use e.g. 1e-5")
    half = halves(n)
    beta = (1 - confidence) / n
    s, mem = scores[:, canary], membership[:, canary]
    per = np.zeros(n)
    r_all = np.zeros(n, dtype=int)
    v_all = np.zeros(n, dtype=int)
    chosen: dict[str, dict[str, Any]] = {}
    for h in (0, 1):
        choose, evaluate = half == 1 - h, half == h
        rule = choose_rule(s[choose], mem[choose], pool, delta, beta, rules)
        bounds, rs, vs = _target_bounds(s[evaluate], mem[evaluate], rule, pool, delta, beta)
        per[evaluate], r_all[evaluate], v_all[evaluate] = bounds, rs, vs
        k_plus, k_minus = rule_counts(rule, m)
        chosen[f"half_{h}"] = {"targets": [int(i) for i in np.flatnonzero(evaluate)],
                               "chosen_on_targets": [int(i) for i in np.flatnonzero(choose)],
                               "k_plus": k_plus, "k_minus": k_minus}
    best = int(np.argmax(per))
    log_rho, p_max = zoo_coin_parameters(pool, m)
    ceiling = max(zoo_epsilon(pool, m, r, r, float(delta), float(beta))
                  for r in {sum(rule_counts(rule, m)) for rule in rules})
    return {"value": float(per[best]), "target": best if per[best] > 0 else None,
            "confidence": float(confidence), "per_target_confidence": 1 - beta,
            "delta": float(delta), "method": METHOD,
            "per_target": [float(x) for x in per], "guesses": r_all.tolist(),
            "correct": v_all.tolist(), "n_trials": int(r_all.sum()),
            "trial": "one guess on one canary of one target; each target audited on its own",
            "canaries": m, "pool": pool, "targets": n, "rules": chosen,
            "max_auditable": ceiling,
            "log_prior_odds_max": log_rho, "prior_max": p_max,
            "neighbouring": "replace-one (fixed-size halves): add/remove (eps, delta) gives "
                            "(2 eps, (1 + e^eps) delta)"}


def accountant_epsilon(extras: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """``(epsilon, delta)`` of a DP zoo's accountant (the largest over its models), from the zoo's
    per-model extras; ``None`` when the models carry no accountant record."""
    eps = [e.get("epsilon") for e in extras]
    deltas = [e.get("delta") for e in extras]
    if not extras or any(not isinstance(x, (int, float)) for x in eps + deltas):
        return None
    return float(max(eps)), float(max(deltas))


def zoo_epsilon_bound(scores: np.ndarray, membership: np.ndarray, canary: np.ndarray, *,
                      defense: str, extras: Sequence[dict[str, Any]],
                      confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any] | None:
    """:func:`canary_epsilon_bound` as the zoo record states it: with the DP zoo's accountant
    (its epsilon beside the bound, its delta in the audit), or for any other zoo at the delta
    of ``default_delta`` for its members per model. ``None`` without canaries."""
    canary = np.asarray(canary, dtype=bool)
    if not canary.any():
        return None
    accountant = accountant_epsilon(extras) if defense == "dp" else None
    if defense == "dp" and accountant is None:
        raise UserError("the DP zoo's models carry no accountant epsilon: retrain them")
    members = int(np.asarray(membership, dtype=bool).sum(1).min())
    delta = accountant[1] if accountant else default_delta(members)
    out = canary_epsilon_bound(scores, membership, canary, delta=delta, confidence=confidence)
    if accountant:
        out["accountant_epsilon"], out["accountant_delta"] = accountant
        out["reading"] = ("a lower bound on the epsilon of this DP-SGD training; it cannot "
                          "exceed the accountant's epsilon unless the accountant or the "
                          "implementation is wrong (or with probability 1 - confidence)")
    else:
        out["accountant_epsilon"] = None
        out["reading"] = ("the epsilon (at this delta) this training cannot have less than, at "
                          "the stated confidence")
    return out
