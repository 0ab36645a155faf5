"""Tests for mcmia_helpers.exposure (per-example exposure) and the defence-aware LiRA attack."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from mcmia_helpers import exposure
from mcmia_helpers.attacks import AttackScores, compute_attack_scores, defence_aware_models, lira_model_specs
from mcmia_helpers.data import load_dataset, make_split
from mcmia_helpers.errors import UserError
from mcmia_helpers.context import ExperimentSpec, TargetContext, shadow_context
from mcmia_helpers.defences.compression import FILE_SIZE_KEYS
from mcmia_helpers.metrics import auc, mean_interval, tpr_at_fpr
from mcmia_helpers.models import count_parameters
from mcmia_helpers.defences.pruning import prunable_layers
from mcmia_helpers.scales import get_scale, split_sizes
from mcmia_helpers.training import TrainConfig


def _scores(seed: int = 0, n: int = 2000, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    return labels, rng.normal(size=n) + shift * labels


def _attack_scores(labels, scores, classes=None, name="lira_online") -> AttackScores:
    n = len(labels)
    classes = np.zeros(n, dtype=int) if classes is None else classes
    return AttackScores(np.arange(n), labels, classes, scores={name: np.asarray(scores, float)})


@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.1])
def test_flagged_share_is_the_tpr_at_that_fpr(fpr) -> None:
    labels, scores = _scores()
    mask = exposure.flagged(labels, scores, fpr)
    assert mask[labels == 1].mean() == pytest.approx(tpr_at_fpr(labels, scores, fpr))
    assert mask[labels == 0].sum() <= np.floor(fpr * (labels == 0).sum() + 1e-9)


def test_flagged_leaves_ties_and_missing_scores_unflagged() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([5.0, 3.0, np.nan, 3.0, 1.0, 0.0])
    mask = exposure.flagged(labels, scores, 0.0)
    assert mask.tolist() == [True, False, False, False, False, False]  # the tie at 3.0 cannot be split
    with pytest.raises(UserError, match="fpr must lie"):
        exposure.flagged(labels, scores, 1.5)


def test_exposure_shift_counts_who_moved() -> None:
    labels, scores = _scores(shift=2.0)
    before = _attack_scores(labels, scores)
    same = exposure.exposure_shift(before, before, "lira_online", 0.01)
    assert same.newly_exposed == same.no_longer_exposed == 0
    assert same.jaccard == 1.0 and same.rank_correlation == pytest.approx(1.0)
    # Push ten members that were not flagged far above every non-member.
    f_before = exposure.flagged(labels, scores, 0.01) & (labels == 1)
    raised = np.flatnonzero(~f_before & (labels == 1))[:10]
    bumped = scores.copy()
    bumped[raised] = scores.max() + 10
    after = _attack_scores(labels, bumped)
    shift = exposure.exposure_shift(before, after, "lira_online", 0.01)
    assert shift.newly_exposed == 10
    assert shift.no_longer_exposed == 0
    assert shift.flagged_after == shift.flagged_before + 10
    assert shift.jaccard == pytest.approx(shift.flagged_before / shift.flagged_after)


def test_member_score_changes_and_percentiles() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0])
    before = _attack_scores(labels, np.array([10.0, -10.0, 1.0, 2.0, 3.0, 4.0]), classes=np.arange(6))
    after = _attack_scores(labels, np.array([-10.0, 10.0, 1.0, 2.0, 3.0, 4.0]), classes=np.arange(6))
    frame = exposure.member_score_changes(before, after, "lira_online")
    assert frame["percentile_before"].tolist() == [1.0, 0.0]
    assert frame["change"].tolist() == [-1.0, 1.0]
    assert frame["class"].tolist() == [0, 1]
    other = AttackScores(np.arange(6) + 1, labels, np.zeros(6, int), scores=before.scores)
    with pytest.raises(UserError, match="different examples"):
        exposure.member_score_changes(before, other, "lira_online")


def test_class_auc_spread_sees_one_leaky_class() -> None:
    rng = np.random.default_rng(1)
    labels = np.tile([1, 0], 400)
    classes = np.repeat([0, 1], 400)
    scores = rng.normal(size=800)
    scores[(classes == 0) & (labels == 1)] += 5.0  # class 0 leaks, class 1 does not
    spread = exposure.class_auc_spread(_attack_scores(labels, scores, classes), "lira_online")
    assert spread["per_class"][0] > 0.95
    assert abs(spread["per_class"][1] - 0.5) < 0.1
    assert spread["spread"] == pytest.approx(spread["per_class"][0] - spread["per_class"][1])


def test_pool_scores_concatenates_and_drops_missing() -> None:
    a = _attack_scores(np.array([1, 0]), np.array([1.0, np.nan]))
    b = _attack_scores(np.array([1, 0]), np.array([2.0, 0.0]))
    labels, scores = exposure.pool_scores([a, b], "lira_online")
    assert labels.tolist() == [1, 1, 0] and scores.tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(UserError, match="no score set"):
        exposure.pool_scores([], "lira_online")


def test_mean_interval_is_the_student_t_interval() -> None:
    values = [0.1, 0.3, 0.2, 0.6]
    mean, lo, hi = mean_interval(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert mean == pytest.approx(0.3) and lo == pytest.approx(0.3 - half) and hi == pytest.approx(0.3 + half)
    assert mean_interval([0.4]) == (0.4, 0.4, 0.4)
    mean, lo, hi = mean_interval([0.0, 0.0, 0.03], bounds=(0, 1))
    assert lo == 0.0 and mean == pytest.approx(0.01) and hi > mean
    with pytest.raises(UserError, match="no finite value"):
        mean_interval([np.nan])


def test_paired_change_direction() -> None:
    assert exposure.paired_change([0.5, 0.6, 0.7], [0.4, 0.5, 0.61])["direction"] == "lower"
    assert exposure.paired_change([0.5, 0.6, 0.7], [0.6, 0.72, 0.8])["direction"] == "higher"
    mixed = exposure.paired_change([0.5, 0.6, 0.7], [0.6, 0.5, 0.7])
    assert mixed["direction"] == "no clear change" and mixed["lo"] < 0 < mixed["hi"]
    assert exposure.paired_change([0.5], [0.1])["direction"] == "no clear change"  # one seed
    assert exposure.paired_change([0.5, 0.6], [0.49, 0.59], tolerance=0.05)["direction"] == "no clear change"
    with pytest.raises(UserError, match="one value per seed"):
        exposure.paired_change([0.5, 0.6], [0.5])


def test_the_after_attack_scores_the_second_model() -> None:
    """``attack_after`` (a defence-aware attack on the defended model) is what the "after" side
    reads, in both comparisons; the "before" side keeps ``attack``."""
    labels, scores = _scores(shift=1.5)
    rng = np.random.default_rng(4)
    aware = scores + 3.0 * labels * (rng.random(len(labels)) < 0.3)  # finds a few members more
    before = _attack_scores(labels, scores)
    after = AttackScores(before.indices, labels, before.classes,
                         scores={"lira_online": scores, "lira_online_aware": aware})
    shift = exposure.exposure_shift(before, after, "lira_online", 0.01, attack_after="lira_online_aware")
    assert shift == exposure.exposure_shift(before, _attack_scores(labels, aware), "lira_online", 0.01)
    assert shift.newly_exposed > 0
    frame = exposure.member_score_changes(before, after, "lira_online", attack_after="lira_online_aware")
    np.testing.assert_array_equal(frame["score_after"], aware[labels == 1])
    np.testing.assert_array_equal(frame["score_before"], scores[labels == 1])


def test_nonmember_percentile_is_the_share_of_nonmembers_strictly_below() -> None:
    labels = np.array([1, 1, 0, 0, 0, 0, 1])
    scores = np.array([2.5, 0.0, 0.0, 1.0, 2.0, 3.0, np.nan])
    p = exposure.nonmember_percentile(labels, scores)
    assert p[:6].tolist() == [0.75, 0.0, 0.0, 0.25, 0.5, 0.75] and np.isnan(p[6])


def test_class_auc_spread_of_three_classes_by_hand() -> None:
    rng = np.random.default_rng(2)
    labels = np.tile([1, 0], 600)
    classes = np.repeat([0, 1, 2], 400)
    scores = rng.normal(size=1200) + labels * np.array([0.0, 1.0, 3.0])[classes]
    spread = exposure.class_auc_spread(_attack_scores(labels, scores, classes), "lira_online")
    aucs = [auc(labels[classes == c], scores[classes == c]) for c in range(3)]
    assert [spread["per_class"][c] for c in range(3)] == pytest.approx(aucs)
    assert spread["spread"] == pytest.approx(max(aucs) - min(aucs))
    assert spread["std"] == pytest.approx(np.std(aucs, ddof=1))


# --------------------------------------------------------------------------- defence-aware LiRA


@pytest.fixture(scope="module")
def small_target():
    """A LeNet-5 context on 100 Fashion-MNIST members (digits where it is missing), 10 epochs."""
    bundle = load_dataset("fashion-mnist", standin="digits", download=False)
    scale = replace(get_scale("ci").for_arch("lenet5"), n_members=100, epochs=10, batch_size=16,
                    n_shadow_models=1, n_lira_models=4)
    split = make_split(len(bundle), split_sizes(100), seed=3, dataset=bundle.name_used)
    spec = ExperimentSpec(arch="lenet5", dataset="fashion-mnist", scale="ci", seed=3)
    return TargetContext(spec, scale, bundle, split, TrainConfig(epochs=10, batch_size=16, seed=3),
                         torch.device("cpu"))


def test_shadow_context_changes_only_members_and_seed(small_target) -> None:
    ctx = small_target
    other = ctx.split.nonmembers
    shadow = shadow_context(ctx, other, seed=77)
    assert torch.equal(shadow.split.members, other)
    assert torch.equal(shadow.split.test, ctx.split.test)
    assert shadow.spec.seed == 77 and shadow.train_config.seed == 77
    assert shadow.train_config.epochs == ctx.train_config.epochs
    assert shadow.cache_config() != ctx.cache_config()
    assert shadow_context(ctx, ctx.split.members, seed=77).cache_config() != shadow.cache_config()
    assert "members_sha256" not in ctx.cache_config()  # targets keep their cache keys
    assert shadow.is_shadow and not ctx.is_shadow
    # The shadow's split holds no part it was drawn from, so it never overlaps itself (the
    # Min-Max game checks that; it rejected every shadow model drawn from the candidates).
    assert shadow.split.nonmembers.numel() == 0 and shadow.split.shadow_pool.numel() == 0
    assert torch.equal(shadow.split.reference, ctx.split.reference)
    shadow.split.verify_disjoint()
    from mcmia_helpers.defences.minmax import check_reference_set

    check_reference_set(shadow.split)


@pytest.mark.slow
def test_defence_aware_lira_trains_pruned_shadows(small_target) -> None:
    from mcmia_helpers.defences import DEFENSES

    ctx = small_target
    plain = compute_attack_scores(ctx, DEFENSES["none"](ctx)[0], ["lira_online", "lira_online_aware"])
    # Against an undefended target the defence-aware attacker is the plain one.
    np.testing.assert_array_equal(plain.scores["lira_online"], plain.scores["lira_online_aware"])

    pruned_ctx = replace(ctx, spec=replace(ctx.spec, defense="prune",
                                           params={"pruning": "magnitude", "sparsity": 0.8}))
    pruned, target_extra = DEFENSES["prune"](pruned_ctx)
    specs, _ = lira_model_specs(pruned_ctx)
    shadows = defence_aware_models(pruned_ctx, specs)
    assert len(shadows) == 4
    # The target's record measures its files; a shadow model (loaded from the cache here)
    # skips that serialising and deflating, and keeps the rest of the report.
    _, shadow_extra = DEFENSES["prune"](shadow_context(pruned_ctx, specs[0].indices, specs[0].seed))
    assert shadow_extra["cached"] and "size_ratio_raw" in target_extra
    assert not set(FILE_SIZE_KEYS) & set(shadow_extra)
    assert shadow_extra["sparsity_achieved"] == pytest.approx(0.8, abs=0.01)
    for model in shadows:  # each shadow model has the zeros the defence claims
        weights = [m.weight for m in prunable_layers(model).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(0.8, abs=0.01)
    total, nonzero = count_parameters(pruned)
    assert nonzero < total
    scores = compute_attack_scores(pruned_ctx, pruned, ["lira_online", "lira_online_aware", "lira_offline_aware"])
    aware, normal = scores.scores["lira_online_aware"], scores.scores["lira_online"]
    assert np.isfinite(aware).all() and not np.allclose(aware, normal)
    assert "trained with the target's defence (prune" in scores.notes["lira_online_aware"]
    # The same shadow models come back from the cache (trained once).
    again = compute_attack_scores(pruned_ctx, pruned, ["lira_online_aware"])
    np.testing.assert_array_equal(again.scores["lira_online_aware"], aware)


def test_seed_interval_needs_three_seeds_and_clips_rates() -> None:
    two = exposure.seed_interval([0.5, 0.7])
    assert two["mean"] == pytest.approx(0.6) and two["low"] is None and two["seeds"] == 2
    three = exposure.seed_interval([0.01, 0.02, 0.06], bounds=(0.0, 1.0))
    mean, low, high = mean_interval([0.01, 0.02, 0.06])
    assert three["mean"] == pytest.approx(mean) and three["high"] == pytest.approx(high)
    assert low < 0 and three["low"] == 0.0  # a rate's interval stays inside [0, 1]
    assert exposure.seed_interval([np.nan])["seeds"] == 0


def test_run_metrics_reads_the_oracle_and_only_calibrated_accuracies() -> None:
    result = {"auc": 0.6, "tpr_at_1pct_fpr": 0.02, "tpr_at_0_1pct_fpr": 0.0, "accuracy": 0.55,
              "advantage": 0.2, "threshold_kind": "fixed"}
    m = exposure.run_metrics(result)
    assert np.isnan(m["accuracy_calibrated"]) and m["accuracy_oracle"] == pytest.approx(0.6)
    m = exposure.run_metrics(result | {"threshold_kind": "calibrated", "accuracy_oracle": 0.61})
    assert m["accuracy_calibrated"] == 0.55 and m["accuracy_oracle"] == 0.61
