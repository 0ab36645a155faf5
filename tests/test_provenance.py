"""What a threshold, an attack network or a trained model was computed from (issue 22).

The records say how an attack was calibrated and which defence parameters a model has; these
tests check what the numbers were *computed from*: a zoo target's threshold and scores must not
move when the target's own logits, or its complementary partner's, are replaced by noise; a
single target's thresholds and attack networks must not move when the target model is replaced
by an untrained one; and every parameter of every defence must reach the trainer (two values,
two different models), for single targets and for zoos.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mcmia_helpers import context
from mcmia_helpers.attacks import runner
from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.attacks.names import METRIC_ATTACKS
from mcmia_helpers.context import ExperimentSpec, prepare
from mcmia_helpers.defences import DEFENSE_PARAMS, DEFENSES
from mcmia_helpers.defences.pruning import prunable_layers
from mcmia_helpers.experiments import validate_spec
from mcmia_helpers.scales import ArchScale, Scale
from mcmia_helpers.zoo.evaluate import ZOO_ATTACKS, attack_zoo
from mcmia_helpers.zoo.train import Zoo

N, P, K = 8, 160, 4


def fake_zoo(seed: int = 0) -> Zoo:
    """8 models' logits on 160 examples of 4 classes: members get a higher logit on their label."""
    gen = torch.Generator().manual_seed(seed)
    membership = lira_in_out_sets(P, N, seed + 1)
    labels = torch.arange(P) % K
    logits = torch.randn(N, P, K, generator=gen)
    logits[:, torch.arange(P), labels] += 1.0 + 1.5 * membership.float()
    canary = torch.zeros(P, dtype=torch.bool)
    return Zoo("none", {}, logits, membership, labels, canary, [0.9] * N, list(range(N)),
               [f"m{i}" for i in range(N)])


def with_noise(zoo: Zoo, models: list[int], seed: int = 9) -> Zoo:
    logits = zoo.logits.clone()
    gen = torch.Generator().manual_seed(seed)
    for j in models:
        logits[j] = 3 * torch.randn(P, K, generator=gen)
    return replace(zoo, logits=logits)


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b


@pytest.mark.parametrize("attack", ZOO_ATTACKS)
def test_a_zoo_targets_threshold_depends_on_its_shadow_models_only(attack) -> None:
    zoo = fake_zoo()
    base = attack_zoo(attack, zoo, zoo)
    assert np.isfinite(base.thresholds).all(), "every target has a calibrated threshold"
    for i in (0, 3, 6):
        partner = i ^ 1
        # the target and its partner replaced by noise: target i's threshold does not move
        noisy = attack_zoo(attack, with_noise(zoo, [i, partner]), with_noise(zoo, [i, partner]))
        assert _same(noisy.thresholds[i], base.thresholds[i]), (attack, i)
        # the partner alone: target i's scores do not move either
        partner_noisy = with_noise(zoo, [partner])
        moved = attack_zoo(attack, partner_noisy, partner_noisy)
        np.testing.assert_array_equal(moved.scores[i], base.scores[i], err_msg=f"{attack} {i}")
        assert _same(moved.thresholds[i], base.thresholds[i]), (attack, i)
        # an unaware attack: the target zoo's logits never calibrate anything
        unaware = attack_zoo(attack, with_noise(zoo, list(range(N))), zoo)
        np.testing.assert_array_equal(unaware.thresholds, base.thresholds)
    if attack == "correctness":
        return  # a 0/1 score: its threshold is 1 whatever the shadow models
    # ... while its shadow models do move target 0's threshold (the check can see a change)
    shadows = list(range(2, N))
    other = attack_zoo(attack, with_noise(zoo, shadows), with_noise(zoo, shadows))
    assert not _same(other.thresholds[0], base.thresholds[0]), attack


# --------------------------------------------------------------------------- one target

#: LeNet-5 on the bundled digits, 64 members, 3 epochs, 2 shadow and 4 LiRA models (so that
#: LiRA's threshold is calibrated leave-one-out): seconds per model.
TINY = Scale("ci", {"lenet5": ArchScale(n_members=64, epochs=3, width=0.5, batch_size=16,
                                        n_shadow_models=2, n_lira_models=4)})


@pytest.fixture(scope="module")
def tiny_scale():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "get_scale", lambda name=None: TINY)
        yield


def _ctx(defense: str = "none", params: dict | None = None):
    spec = ExperimentSpec(arch="lenet5", dataset="digits", defense=defense, seed=7,
                          params=dict(params or {}))
    return prepare(validate_spec(spec))


def _scores_and_networks(ctx, model, names):
    networks = []
    real = runner.train_attack_classifier

    def recording(*args, **kwargs):
        net = real(*args, **kwargs)
        networks.append({k: v.clone() for k, v in net.state_dict().items()})
        return net

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "train_attack_classifier", recording)
        scores = runner.compute_attack_scores(ctx, model, names)
    return scores, networks


def test_thresholds_and_attack_networks_ignore_the_target_model(tiny_scale) -> None:
    ctx = _ctx()
    model, _ = DEFENSES["none"](ctx)
    torch.manual_seed(123)
    untrained = ctx.build()  # logits that know nothing of the members
    names = list(METRIC_ATTACKS) + ["shadow_top3", "shadow_label", "lira_online", "lira_offline"]
    trained, nets = _scores_and_networks(ctx, model, names)
    noise, noise_nets = _scores_and_networks(ctx, untrained, names)
    for name in names:
        assert trained.thresholds[name] is not None, name
        assert noise.thresholds[name] == trained.thresholds[name], name
        assert not np.array_equal(noise.scores[name], trained.scores[name]), name
    assert len(nets) == len(noise_nets) == 2
    for a, b in zip(nets, noise_nets):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- defence parameters


def _spec_file(path) -> str:
    """A per-layer sparsity file for the tiny LeNet-5: 30% everywhere, 95% in the largest layer."""
    layers = prunable_layers(_ctx().build())
    largest = max(layers, key=lambda name: layers[name].weight.numel())
    path.write_text(json.dumps({"default": 0.3, largest: 0.95}))
    return str(path)


#: A second value for every parameter of every defence (the first is the default).
VARIANTS = {
    "prune": {"pruning": "magnitude", "sparsity": 0.5, "sparsity_spec": "<file>"},
    "minmax": {"lam": 0.5, "k_steps": 2},
    "prune+minmax": {"pruning": "magnitude", "sparsity": 0.5, "sparsity_spec": "<file>",
                     "lam": 0.5, "k_steps": 2},
    "dp": {"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 0.3},  # default delta 1e-3
}


def test_every_registered_defence_parameter_has_a_variant() -> None:
    assert set(VARIANTS) == set(DEFENSES) - {"none"}
    for defense, params in VARIANTS.items():
        assert set(params) == set(DEFENSE_PARAMS[defense]), defense


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([v.detach().flatten().float() for v in model.state_dict().values()])


@pytest.mark.slow
@pytest.mark.parametrize("defense, param", [(d, p) for d, ps in VARIANTS.items() for p in ps])
def test_every_defence_parameter_reaches_its_trainer(tiny_scale, tmp_path, defense, param) -> None:
    value = VARIANTS[defense][param]
    if value == "<file>":
        value = _spec_file(tmp_path / "spec.json")
    base, _ = DEFENSES[defense](_ctx(defense))
    other, _ = DEFENSES[defense](_ctx(defense, {param: value}))
    a, b = _weights(base), _weights(other)
    assert a.shape != b.shape or not torch.equal(a, b), f"{defense}: {param}={value!r} trained the default"


@pytest.fixture(scope="module")
def tiny_zoo():
    """A 4-model LeNet-5 zoo on 200 digits (no canaries); the tests train its model 0 only."""
    from mcmia_helpers.zoo import ZooSpec, prepare_zoo

    return prepare_zoo(ZooSpec("lenet5", "digits", scale="ci", n_models=4, pool=200, canaries=0))


@pytest.mark.slow
@pytest.mark.parametrize("defense, param", [(d, p) for d, ps in VARIANTS.items() for p in ps])
def test_every_zoo_defence_parameter_reaches_its_trainer(tiny_zoo, tmp_path, defense, param) -> None:
    """The zoo trains pruned models on its own grouped engine and the others one at a time:
    either way, two values of a parameter give model 0 two different sets of logits."""
    from mcmia_helpers.zoo import train_zoo

    value = VARIANTS[defense][param]
    if value == "<file>":
        value = _spec_file(tmp_path / "spec.json")
    base = train_zoo(tiny_zoo, defense, {}, 1)
    other = train_zoo(tiny_zoo, defense, {param: value}, 1)
    assert base.keys != other.keys
    assert not torch.equal(base.logits, other.logits), f"{defense} zoo: {param}={value!r} trained the default"
