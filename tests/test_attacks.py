"""Tests for mcmia_helpers.attacks: scores, inference model, LiRA, calibration, end to end."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcmia_helpers.attacks import (ATTACKS, DEFENCE_AWARE_ATTACKS, THREAT_MODELS, InferenceModel, calibrate_threshold,
                                   compute_attack_scores, confidence_score, default_attacks,
                                   entropy_score, lira_in_out_sets, lira_scores, logit_confidence,
                                   loss_score, modified_entropy_score, nasr_sets, run_attacks,
                                   train_inference_model, validate_attack_names, correctness_score)
from mcmia_helpers.data import MIASplit, load_dataset, make_split
from mcmia_helpers.errors import UserError
from mcmia_helpers.context import ExperimentSpec, TargetContext
from mcmia_helpers.attacks import lira_threshold
from mcmia_helpers.metrics import METRIC_KEYS, auc, balanced_accuracy, best_threshold
from mcmia_helpers.scales import get_scale, split_sizes
from mcmia_helpers.training import TrainConfig, fit, predict_logits

# --------------------------------------------------------------------------- scores


def test_metric_scores_by_formula() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [5.0, -5.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    p = F.softmax(logits.double(), -1)
    np.testing.assert_allclose(loss_score(logits, labels),
                               -F.cross_entropy(logits.double(), labels, reduction="none").numpy())
    np.testing.assert_allclose(confidence_score(logits), np.log(p.max(-1).values.numpy()))
    np.testing.assert_allclose(entropy_score(logits), (p * p.log()).sum(-1).numpy())
    mentr = []
    for row, y in zip(p.numpy(), labels.tolist()):
        value = -(1 - row[y]) * np.log(row[y])
        value -= sum(row[i] * np.log(1 - row[i]) for i in range(3) if i != y)
        mentr.append(-value)
    np.testing.assert_allclose(modified_entropy_score(logits, labels), mentr)
    np.testing.assert_array_equal(correctness_score(logits, labels), [1.0, 1.0, 0.0])


def test_logit_confidence_is_stable() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [60.0, 0.0, 0.0], [-60.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    stat = logit_confidence(logits, labels)
    p = F.softmax(logits[0].double(), -1)[0]
    assert stat[0] == pytest.approx(math.log(p / (1 - p)))
    assert stat[1] == pytest.approx(60.0 - math.log(2.0))  # p rounds to 1 in float, the logit does not
    assert stat[2] == pytest.approx(-60.0 - math.log(2.0))
    assert torch.isfinite(stat).all()


# --------------------------------------------------------------------------- inference model


def _toy_posteriors(n: int, member: bool, gen: torch.Generator, num_classes: int = 5):
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    logits = torch.randn(n, num_classes, generator=gen)
    logits[torch.arange(n), labels] += 4.0 if member else 1.0
    return F.softmax(logits, -1), labels


def test_inference_model_interface_and_learning() -> None:
    net = InferenceModel(num_classes=5, hidden=16)
    probs = torch.rand(4, 5, requires_grad=True)
    out = net(probs.softmax(-1), F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float())
    assert out.shape == (4,)
    out.sum().backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()  # the Min-Max game needs this

    gen = torch.Generator().manual_seed(0)
    pm, ym = _toy_posteriors(300, True, gen)
    pn, yn = _toy_posteriors(300, False, gen)
    net = train_inference_model(pm, ym, pn, yn, epochs=20, seed=0)
    assert not net.training
    tm, tym = _toy_posteriors(200, True, gen)
    tn, tyn = _toy_posteriors(200, False, gen)
    with torch.no_grad():
        scores = torch.cat([net(tm, F.one_hot(tym, 5).float()), net(tn, F.one_hot(tyn, 5).float())])
    labels = np.r_[np.ones(200), np.zeros(200)].astype(int)
    assert auc(labels, scores.numpy()) > 0.9
    with pytest.raises(UserError):
        InferenceModel(num_classes=1)


# --------------------------------------------------------------------------- LiRA


@pytest.mark.parametrize("n_models", [2, 4, 8])
def test_lira_halves_balanced(n_models: int) -> None:
    keep = lira_in_out_sets(100, n_models, seed=0)
    assert keep.shape == (n_models, 100)
    assert (keep.sum(1) == 50).all()  # every model trains on as many examples as the target
    assert (keep.sum(0) == n_models // 2).all()  # every example is IN for half of the models
    assert (keep[0] ^ keep[1]).all()  # pairs are complementary
    assert torch.equal(keep, lira_in_out_sets(100, n_models, seed=0))
    assert not torch.equal(keep, lira_in_out_sets(100, n_models, seed=1))


def test_lira_scores_separate_synthetic_in_and_out() -> None:
    gen = torch.Generator().manual_seed(0)
    n_models, n_examples = 16, 400
    difficulty = torch.randn(n_examples, generator=gen) * 3  # per-example offsets LiRA must remove
    in_mask = lira_in_out_sets(n_examples, n_models, seed=1)
    shadow = difficulty + 1.5 * in_mask.double() + 0.5 * torch.randn(n_models, n_examples, generator=gen)
    is_member = torch.arange(n_examples) % 2 == 0
    target = difficulty + 1.5 * is_member.double() + 0.5 * torch.randn(n_examples, generator=gen)
    labels = is_member.numpy().astype(int)
    for online in (True, False):
        for global_variance in (True, False):
            scores = lira_scores(target, shadow, in_mask, online, global_variance)
            assert np.isfinite(scores).all()
            assert auc(labels, scores) > 0.9
    # the raw statistic, without the per-example calibration, is much weaker
    assert auc(labels, target.numpy()) < 0.7


def test_lira_scores_nan_without_observations() -> None:
    in_mask = torch.tensor([[True, True], [True, False]])
    shadow = torch.tensor([[1.0, 2.0], [1.5, 0.0]])
    offline = lira_scores(torch.tensor([1.0, 1.0]), shadow, in_mask, online=False)
    assert np.isnan(offline[0]) and np.isfinite(offline[1])


def _lira_world(n_models: int, n_examples: int = 400, seed: int = 0):
    """Synthetic LiRA statistics: per-example difficulty (sd 3), +1.5 when a model trained on the
    example, model noise (sd 0.5). Returns a function drawing models for an IN mask."""
    gen = torch.Generator().manual_seed(seed)
    difficulty = torch.randn(n_examples, generator=gen) * 3

    def draw(in_mask: torch.Tensor) -> torch.Tensor:
        return difficulty + 1.5 * in_mask.double() + 0.5 * torch.randn(in_mask.shape, generator=gen)

    in_mask = lira_in_out_sets(n_examples, n_models, seed=seed + 1)
    return draw, in_mask, draw(in_mask)


@pytest.mark.parametrize("online", [True, False])
def test_lira_threshold_is_leave_one_out(online: bool) -> None:
    """Each shadow model in turn is the target, scored by the *other* models but its partner
    (trained on the complement of its members) against its own IN/OUT sets; the threshold is
    the best one over all of those scores."""
    _, in_mask, stats = _lira_world(8)
    scores, labels = [], []
    for j in range(8):
        others = [i for i in range(8) if i not in (j, j ^ 1)]  # lira_in_out_sets' pairs
        s = lira_scores(stats[j], stats[others], in_mask[others], online, True)
        scores.append(s)
        labels.append(in_mask[j].numpy())
    expected = best_threshold(np.concatenate(labels).astype(int), np.concatenate(scores))
    assert lira_threshold(stats, in_mask, online, True) == expected
    # scoring a model with itself among the shadow models (no leave-one-out) is a different,
    # over-confident calibration: the test above tells the two apart
    with_self = np.concatenate([lira_scores(stats[j], stats, in_mask, online, True) for j in range(8)])
    assert best_threshold(np.concatenate(labels).astype(int), with_self) != expected
    # so is keeping the partner: every example IN for one model fewer when it is a member
    with_partner = np.concatenate([
        lira_scores(stats[j], stats[[i for i in range(8) if i != j]],
                    in_mask[[i for i in range(8) if i != j]], online, True) for j in range(8)])
    assert best_threshold(np.concatenate(labels).astype(int), with_partner) != expected


@pytest.mark.parametrize("online", [True, False])
def test_lira_threshold_transfers_to_a_fresh_target(online: bool) -> None:
    """Calibrated on the shadow models only, the threshold's balanced accuracy on a new target
    (one never seen) is close to the best any threshold reaches on that target's labels."""
    draw, in_mask, stats = _lira_world(8)
    threshold = lira_threshold(stats, in_mask, online, True)
    is_member = torch.arange(400) % 3 == 0  # any membership, not a LiRA half
    target = draw(is_member)
    scores = lira_scores(target, stats, in_mask, online, True)
    labels = is_member.numpy().astype(int)
    calibrated = balanced_accuracy(labels, (scores >= threshold).astype(int))
    oracle = balanced_accuracy(labels, (scores >= best_threshold(labels, scores)).astype(int))
    assert calibrated > 0.75 and oracle - calibrated < 0.03


def test_lira_threshold_needs_four_models_and_both_labels() -> None:
    for n in (2, 3):
        _, in_mask, stats = _lira_world(n)
        assert lira_threshold(stats, in_mask, True, True) is None
        assert lira_threshold(stats, in_mask, False, True) is None
    _, in_mask, stats = _lira_world(4)
    assert isinstance(lira_threshold(stats, in_mask, True, True), float)
    everyone_in = torch.ones_like(in_mask)  # no OUT observation anywhere: nothing to calibrate on
    assert lira_threshold(stats, everyone_in, True, True) is None


def test_calibrate_threshold_picks_the_separating_score() -> None:
    scores = np.array([0.1, 0.2, 0.35, 0.8])
    is_in = np.array([0, 0, 1, 1])  # 0.35 separates them: TPR 1 at FPR 0
    assert calibrate_threshold(scores, is_in) == pytest.approx(0.35)


# --------------------------------------------------------------------------- names


def test_attack_names() -> None:
    assert validate_attack_names("loss, lira_online") == ("loss", "lira_online")
    assert validate_attack_names(None) == ATTACKS
    with pytest.raises(UserError, match="unknown attack.*'lira'.*choose from"):
        validate_attack_names("loss,lira")
    with pytest.raises(UserError, match="no attack"):
        validate_attack_names(" , ")
    assert set(THREAT_MODELS) == set(ATTACKS)
    lenet = get_scale("ci").for_arch("lenet5")
    assert default_attacks(lenet) == tuple(a for a in ATTACKS if a not in DEFENCE_AWARE_ATTACKS)
    no_lira = default_attacks(replace(lenet, n_lira_models=1))
    assert "lira_online" not in no_lira and "loss" in no_lira


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def overfit_target(tmp_path_factory):
    """An overfit LeNet-5: 100 members, 40 epochs (Fashion-MNIST, or the digits where it is missing)."""
    bundle = load_dataset("fashion-mnist", standin="digits", download=False)
    scale = replace(get_scale("ci").for_arch("lenet5"), n_members=100, epochs=40, batch_size=16,
                    n_shadow_models=2, n_lira_models=4)
    split = make_split(len(bundle), split_sizes(100), seed=0, dataset=bundle.name_used)
    config = TrainConfig(epochs=40, batch_size=16, seed=0)
    spec = ExperimentSpec(arch="lenet5", dataset="fashion-mnist", scale="ci", seed=0)
    ctx = TargetContext(spec, scale, bundle, split, config, torch.device("cpu"))
    model = ctx.build()
    fit(model, bundle, split.members, config, device=ctx.device)
    cache = tmp_path_factory.mktemp("shadow-cache")
    scores = compute_attack_scores(ctx, model, cache=cache)
    return ctx, model, cache, scores


#: The default attacks expected to beat chance on ``overfit_target``. Measured AUC on seed 0 (and
#: the lowest over the same fixture with seeds 0-5): shadow_top3 0.69 (0.57), shadow_label 0.73
#: (0.72), loss 0.69 (0.65), confidence 0.63 (0.59), entropy 0.64 (0.58), modified_entropy 0.69
#: (0.65), correctness 0.68 (0.64); the lower end of the bootstrap interval was above 0.5 for
#: each on seed 0 and on 5 or 6 of the 6 seeds. LiRA as its authors run it (issue 25: medians,
#: the reference's variance): lira_online 0.766 (0.690), lira_offline 0.729 (0.666), was 0.76
#: and 0.72 with means; RMIA: rmia_online 0.782 (0.741), rmia_offline 0.781 (0.723).
BEATS_CHANCE = ("shadow_top3", "shadow_label", "loss", "confidence", "entropy",
                "modified_entropy", "correctness", "lira_online", "lira_offline", "rmia_online",
                "rmia_offline")


@pytest.mark.slow
def test_every_attack_beats_chance_on_the_overfit_target(overfit_target) -> None:
    """Each attack expected to work here finds the members: its AUC interval lies above 0.5.

    nasr_inference is left out on purpose: it learns its attack network from the 50 known
    members only (against 50 reference non-members), and on this fixture it measures 0.47-0.63
    over seeds 0-5 with intervals that include 0.5; it has its own, larger fixture below."""
    ctx, _, _, scores = overfit_target
    metrics = scores.metrics(n_bootstrap=200)
    assert set(metrics) == set(default_attacks(ctx.arch_scale)) == set(BEATS_CHANCE) | {"nasr_inference"}
    for name in BEATS_CHANCE:
        lo, hi = metrics[name]["ci95"]["auc"]
        assert lo > 0.5, (name, metrics[name]["auc"], lo)
        assert lo < metrics[name]["auc"] < hi
    assert metrics["loss"]["auc"] > 0.6 and metrics["lira_online"]["auc"] > 0.6
    for name in metrics:
        assert set(METRIC_KEYS) <= set(metrics[name])
        assert metrics[name]["threshold_kind"] == "calibrated"  # 4 LiRA models: leave-one-out works


@pytest.fixture(scope="module")
def nasr_target():
    """A LeNet-5 with 500 members, 40 epochs: nasr_inference's attack network gets 250 known
    members and 250 reference non-members, and is evaluated on 250 + 250 others."""
    bundle = load_dataset("fashion-mnist", standin="digits", download=False)
    scale = replace(get_scale("ci").for_arch("lenet5"), n_members=500, epochs=40, batch_size=16,
                    n_shadow_models=0, n_lira_models=0)
    split = make_split(len(bundle), split_sizes(500), seed=0, dataset=bundle.name_used)
    config = TrainConfig(epochs=40, batch_size=16, seed=0)
    spec = ExperimentSpec(arch="lenet5", dataset="fashion-mnist", scale="ci", seed=0)
    ctx = TargetContext(spec, scale, bundle, split, config, torch.device("cpu"))
    model = ctx.build()
    fit(model, bundle, split.members, config, device=ctx.device)
    return ctx, model


@pytest.mark.slow
def test_nasr_inference_beats_chance_with_250_known_members(nasr_target) -> None:
    """Measured AUC 0.56-0.60 over seeds 0-6 (the loss attack on the same examples: 0.56-0.69)."""
    ctx, model = nasr_target
    record = compute_attack_scores(ctx, model, ["nasr_inference"]).metrics(n_bootstrap=200)
    nasr = record["nasr_inference"]
    assert nasr["n_members"] == nasr["n_nonmembers"] == 250
    assert nasr["ci95"]["auc"][0] > 0.5, nasr["auc"]


@pytest.mark.slow
def test_calibration_never_touches_target_membership(overfit_target) -> None:
    """Re-draw which candidates are members (same target model, same candidates): every attack
    whose threat model excludes membership knowledge must produce the same score for every
    example and the same threshold. Only nasr_inference, which knows half of the members, may change."""
    ctx, model, cache, scores = overfit_target
    union = torch.cat([ctx.split.members, ctx.split.nonmembers])
    perm = torch.randperm(len(union), generator=torch.Generator().manual_seed(123))
    n = len(ctx.split.members)
    relabelled = MIASplit(union[perm[:n]].sort().values, union[perm[n:]].sort().values,
                          ctx.split.shadow_pool, ctx.split.reference, ctx.split.test,
                          ctx.split.seed, ctx.split.dataset)
    other = compute_attack_scores(replace(ctx, split=relabelled), model, cache=cache)
    by_index = {int(i): k for k, i in enumerate(scores.indices)}
    where = np.array([by_index[int(i)] for i in other.indices])
    assert not np.array_equal(scores.labels[where], other.labels)  # the labels did change
    for name in scores.scores:
        if name == "nasr_inference":
            continue
        np.testing.assert_array_equal(other.scores[name], scores.scores[name][where], err_msg=name)
        assert other.thresholds[name] == scores.thresholds[name], name
    # so RMIA, which separates the true members (test above), is at chance on the relabelled
    # membership: its AUC interval there contains 0.5
    relabelled_metrics = other.metrics(n_bootstrap=200)
    for name in ("rmia_online", "rmia_offline"):
        assert scores.metrics(n_bootstrap=200)[name]["ci95"]["auc"][0] > 0.5, name
        low, high = relabelled_metrics[name]["ci95"]["auc"]
        assert low < 0.5 < high, (name, relabelled_metrics[name]["auc"])


@pytest.mark.slow
def test_nasr_evaluates_only_held_out_members(overfit_target) -> None:
    ctx, _, _, scores = overfit_target
    sets = nasr_sets(ctx)
    n = len(ctx.split.members)
    assert len(set(sets.known.tolist()) & set(sets.held_out.tolist())) == 0
    assert len(sets.held_out) == len(sets.eval_nonmembers) == n // 2
    assert set(sets.reference.tolist()) <= set(ctx.split.shadow_pool.tolist())
    evaluated = scores.evaluated("nasr_inference")
    assert not evaluated[sets.known.numpy()].any()
    assert evaluated[sets.held_out.numpy()].all()
    assert evaluated[n + sets.eval_nonmembers.numpy()].all()
    assert evaluated.sum() == n  # n/2 members + n/2 non-members
    record = scores.metrics(n_bootstrap=0)["nasr_inference"]
    assert record["n_members"] == record["n_nonmembers"] == n // 2
    assert "other 50 members" in record["note"]


@pytest.mark.slow
def test_run_attacks_record_and_saved_scores(overfit_target, tmp_path) -> None:
    ctx, model, cache, _ = overfit_target
    path = tmp_path / "scores.npz"
    results = run_attacks(ctx, model, "loss,lira_offline,nasr_inference", save_scores=path,
                          n_bootstrap=20, cache=cache)
    assert list(results) == ["loss", "lira_offline", "nasr_inference"]
    for record in results.values():
        assert set(METRIC_KEYS) <= set(record) and set(record["ci95"]) == set(METRIC_KEYS)
        assert record["knowledge"]
    saved = np.load(path)
    n = len(ctx.split.members)
    assert list(saved["attacks"]) == ["loss", "lira_offline", "nasr_inference"]
    assert saved["labels"].sum() == n and len(saved["labels"]) == 2 * n
    np.testing.assert_array_equal(saved["indices"][:n], ctx.split.members.numpy())
    expected_classes = ctx.bundle.labels[torch.as_tensor(saved["indices"])].numpy()
    np.testing.assert_array_equal(saved["classes"], expected_classes)
    assert np.isfinite(saved["score_loss"]).all()
    assert np.isnan(saved["score_nasr_inference"]).sum() == n  # known members + unevaluated non-members
    assert float(saved["threshold_loss"]) == pytest.approx(results["loss"]["threshold"])
    assert len(list(cache.glob("*.pt"))) == 6  # 2 shadow + 4 LiRA models, trained once


@pytest.mark.slow
def test_lira_with_two_models_reports_the_oracle_accuracy(overfit_target) -> None:
    """With fewer than 4 LiRA models no leave-one-out threshold exists: the record says the
    accuracy is the oracle's (best threshold on the target's labels) and the note says why."""
    ctx, model, cache, _ = overfit_target
    two = replace(ctx, arch_scale=replace(ctx.arch_scale, n_lira_models=2))
    scores = compute_attack_scores(two, model, ["lira_online"], cache=cache)
    assert scores.thresholds["lira_online"] is None
    assert "fewer than 4 shadow models" in scores.notes["lira_online"]
    record = scores.metrics(n_bootstrap=0)["lira_online"]
    assert record["threshold_kind"] == "oracle"
    labels, s = scores.labels, scores.scores["lira_online"]
    assert record["accuracy"] == pytest.approx(
        balanced_accuracy(labels, (s >= best_threshold(labels, s)).astype(int)))


@pytest.mark.slow
def test_nasr_features_are_standardised_and_help_on_the_small_fixture(overfit_target, monkeypatch) -> None:
    """Nasr's inference attack standardises its posterior features on its own training set, as
    the shadow attack's network does (issue 25). On this fixture (50 known members against 50
    reference non-members) its AUC next to the shadow attack's, seeds 0-5: standardised 0.500,
    0.700, 0.536, 0.538, 0.635, 0.632 (mean 0.590); raw features 0.471, 0.578, 0.534, 0.515,
    0.611, 0.628 (mean 0.556); shadow_top3 0.690, 0.658, 0.677, 0.573, 0.646, 0.629 (mean 0.646).
    Standardised was at least as good as raw on all six seeds; the attack stays weak here (50
    known members; see the 250-member fixture above)."""
    import mcmia_helpers.attacks.runner as runner
    from mcmia_helpers.attacks.classifiers import StandardisedInference, _posterior_features

    ctx, model, cache, scores = overfit_target
    sets = nasr_sets(ctx)
    logits = predict_logits(model, ctx.bundle, ctx.split.members[sets.known])
    ref_logits = predict_logits(model, ctx.bundle, sets.reference)
    probs = torch.cat([F.softmax(logits, -1), F.softmax(ref_logits, -1)])
    net = train_inference_model(probs[:len(logits)], ctx.bundle.labels[ctx.split.members[sets.known]],
                                probs[len(logits):], ctx.bundle.labels[sets.reference], seed=0)
    assert isinstance(net, StandardisedInference)
    z = (_posterior_features(net.net, probs) - net.mean) / net.std
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-5)
    informative = probs.std(0).repeat(2) > 1e-6
    np.testing.assert_allclose(z.std(0).numpy()[informative.numpy()], 1.0, atol=1e-4)

    metrics = scores.metrics(n_bootstrap=0)
    standardised, shadow = metrics["nasr_inference"]["auc"], metrics["shadow_top3"]["auc"]
    real = runner.train_inference_model
    monkeypatch.setattr(runner, "train_inference_model",
                        lambda *a, **k: real(*a, **k, standardise=False))
    raw = compute_attack_scores(ctx, model, ["nasr_inference"], cache=cache).metrics(n_bootstrap=0)
    assert standardised >= raw["nasr_inference"]["auc"], (standardised, raw["nasr_inference"]["auc"])
    assert 0.45 < standardised < shadow  # seed 0: 0.500 against the shadow attack's 0.690
