"""DP-SGD: epsilon on target, DP defeats the loss attack, every architecture trains, bad input."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune  # the reparametrisation the DP trainer refuses (no longer imported by the package)
from opacus.validators import ModuleValidator
from sklearn.metrics import roc_auc_score
from torch import nn

from mcmia_helpers import context, experiments
from mcmia_helpers.defences import registry
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import ARCHITECTURES, build_model
from mcmia_helpers.defences.dp import (check_delta, check_epsilon, default_delta, dp_train_config,
                                   train_dp, train_dp_target, validate_dp_params)
from mcmia_helpers.defences.pruning import MaskCallback, apply_masks
from mcmia_helpers.scales import ArchScale, Scale
from mcmia_helpers.training import TrainConfig, fit, predict_logits

CPU = torch.device("cpu")
#: 4 Poisson batches per epoch (sample rate 0.25): the accountant is fast at this rate.
TINY = TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, seed=3, amp=False)


def _lenet(dp: bool = True, width: float = 0.5) -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", 10, 1, 28, width=width, dp_compatible=dp)


@pytest.mark.parametrize("n,expected", [(100, 1e-3), (256, 1e-4), (500, 1e-4), (60_000, 1e-6)])
def test_default_delta_is_a_power_of_ten_below_one_over_ten_n(n: int, expected: float) -> None:
    assert default_delta(n) == expected
    assert default_delta(n) <= 1 / (10 * n) < 1 / n


@pytest.mark.parametrize("target", [4.0, 1.0])
def test_spent_epsilon_is_within_0_01_below_target(fashion, target: float) -> None:
    """The documented contract: the run spends between target - 0.01 and target."""
    members = torch.arange(64)
    model, info = train_dp(_lenet(), fashion, members, TINY, target_epsilon=target, device=CPU)
    assert target - 0.01 <= info["epsilon"] <= target
    assert info["delta"] == default_delta(64) == 1e-3
    assert info["target_epsilon"] == target and info["accountant"] == "rdp"
    assert info["sample_rate"] == pytest.approx(0.25)
    assert info["noise_multiplier"] > 0.5
    spent = [row["epsilon"] for row in info["history"]]
    assert [row["epoch"] for row in info["history"]] == [0, 1]
    assert 0 < spent[0] < spent[1] == info["epsilon"]
    # the memoised per-step accounting agrees with Opacus' own RDP accountant
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(info["noise_multiplier"], info["sample_rate"], 8)]
    assert info["epsilon"] == pytest.approx(accountant.get_epsilon(info["delta"]), rel=0.02)


@pytest.mark.slow
def test_prv_accountant_also_lands_on_target(fashion) -> None:
    _, info = train_dp(_lenet(), fashion, torch.arange(64), TINY, target_epsilon=4.0,
                       accountant="prv", device=CPU)
    assert info["accountant"] == "prv" and 3.99 <= info["epsilon"] <= 4.0


def test_empty_poisson_batches_are_survived(fashion) -> None:
    """At sample rate 1/32 about one batch in eight is empty (four here): training goes on."""
    config = replace(TINY, epochs=1, batch_size=2)
    model, info = train_dp(_lenet(), fashion, torch.arange(64), config, target_epsilon=8.0,
                           device=CPU)
    assert info["sample_rate"] == pytest.approx(1 / 32)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_returned_model_is_plain_and_trained(fashion) -> None:
    model = _lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Opacus' routine warnings are silenced inside
        trained, info = train_dp(model, fashion, torch.arange(64), TINY, target_epsilon=8.0,
                                 device=CPU)
    assert trained is model and type(trained).__name__ == "LeNet5"
    assert list(trained.state_dict()) == list(before)  # no "_module." prefixes
    assert not any(hasattr(p, "grad_sample") for p in trained.parameters())
    assert any(not torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert all(torch.isfinite(v).all() for v in trained.state_dict().values())


def _canary_digits(digits, flip: float = 0.3):
    """scikit-learn's digits at 8x8 with a fixed 30% of labels changed to another class (the
    canaries): a model memorises a member's wrong label only by seeing that very example, so
    the loss on the canaries measures memorisation. Also returns the true labels and the mask."""
    clean = digits.as_view(8, 1)
    gen = torch.Generator().manual_seed(1234)
    flipped = torch.rand(len(clean), generator=gen) < flip
    labels = clean.labels.clone()
    labels[flipped] = (labels[flipped] + torch.randint(1, 10, (int(flipped.sum()),), generator=gen)) % 10
    return replace(clean, labels=labels), clean.labels, flipped


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def test_dp_model_learns_and_noise_lowers_leakage(digits) -> None:
    """600 members, expected batch 60 (sample rate 0.1), 40 epochs = 400 DP-SGD steps, clipping
    at 1. At epsilon 4 the model learns (test accuracy 0.42-0.55 over eight seeds; chance is
    0.1); with the same clipping and no noise (epsilon 1e7: noise multiplier 0.008) the loss
    separates member canaries from non-member canaries (AUC 0.78-0.84), with noise much less
    (0.57-0.62; the gap was 0.18-0.24 on all eight seeds). About 4 s on one core."""
    seed = 0
    bundle, true_labels, canary = _canary_digits(digits)
    perm = torch.randperm(len(bundle), generator=torch.Generator().manual_seed(seed))
    members, nonmembers, test = perm[:600], perm[600:1200], perm[1200:]
    config = TrainConfig(epochs=40, batch_size=60, optimizer="sgd", lr=0.2, momentum=0.9,
                         seed=seed, amp=False)

    def canary_auc(model: nn.Module) -> float:
        idx = torch.cat([members, nonmembers])
        losses = F.cross_entropy(predict_logits(model, bundle, idx, device=CPU), bundle.labels[idx],
                                 reduction="none")
        is_member = torch.cat([torch.ones(600), torch.zeros(600)]).bool()
        keep = canary[idx]
        return float(roc_auc_score(is_member[keep].numpy(), (-losses[keep]).numpy()))

    private, info = train_dp(_mlp(seed), bundle, members, config, target_epsilon=4.0, device=CPU)
    clipped, clip_info = train_dp(_mlp(seed), bundle, members, config, target_epsilon=1e7,
                                  device=CPU)
    for run in (info, clip_info):
        assert run["sample_rate"] == pytest.approx(0.1) and run["max_grad_norm"] == 1.0
        assert config.epochs * round(1 / run["sample_rate"]) >= 100  # DP-SGD steps
    assert 3.99 <= info["epsilon"] <= 4.0 and info["noise_multiplier"] > 1.0
    assert clip_info["noise_multiplier"] < 0.01
    test_acc = float((predict_logits(private, bundle, test, device=CPU).argmax(1)
                      == true_labels[test]).float().mean())
    assert test_acc > 0.3  # the private model learns: three times chance
    private_auc, clipped_auc = canary_auc(private), canary_auc(clipped)
    assert clipped_auc > 0.7  # without noise, clipping alone does not stop memorisation
    assert private_auc < clipped_auc - 0.1  # the noise is what protects the members


def test_clipping_bounds_each_example_and_noise_has_the_promised_scale(fashion, monkeypatch) -> None:
    """One full-batch DP-SGD step (sample rate 1, plain SGD at lr 1): without noise the update is
    minus the mean of the per-example gradients, each clipped to max_grad_norm; with noise
    multiplier sigma the update moves by Gaussian noise of std sigma * C / batch per weight."""
    import mcmia_helpers.defences.dp as privacy

    members, clip = torch.arange(32), 1e-3
    config = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=1.0, momentum=0.0, seed=5,
                         amp=False)
    model = _lenet()
    start = [p.detach().clone() for p in model.parameters()]
    x, y = fashion.batch(members)
    clipped_sum = [torch.zeros_like(p) for p in model.parameters()]
    largest = 0.0
    for i in range(len(members)):  # the per-example gradients, by hand
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        largest = max(largest, norm)
        for acc, g in zip(clipped_sum, grads):
            acc += g * min(1.0, clip / (norm + 1e-6))
    assert largest > 100 * clip  # clipping is not a no-op here

    def one_step(sigma: float) -> list[torch.Tensor]:
        monkeypatch.setattr(privacy, "noise_multiplier_for", lambda *args, **kwargs: sigma)
        net = _lenet()
        train_dp(net, fashion, members, config, target_epsilon=4.0, max_grad_norm=clip, device=CPU)
        return [(p.detach() - s) for p, s in zip(net.parameters(), start)]

    quiet = one_step(0.0)
    got = torch.cat([u.flatten() for u in quiet]).double()
    want = -torch.cat([a.flatten() for a in clipped_sum]).double() / len(members)
    assert float((got - want).norm()) <= 1e-3 * float(want.norm())  # float32 summation order
    total = float(got.norm())
    assert total <= clip * (1 + 1e-4)  # a mean of vectors of norm <= C has norm <= C

    sigma = 2.0
    noise = torch.cat([(a - b).flatten() for a, b in zip(one_step(sigma), quiet)])
    assert float(noise.std()) == pytest.approx(sigma * clip / len(members), rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * sigma * clip / len(members)


def test_physical_batches_give_the_same_model(fashion) -> None:
    """BatchMemoryManager splits each Poisson batch into physical batches: any split gives the
    same clipped sum, the same noise and so the same weights (up to float summation order)."""
    config = replace(TINY, epochs=2, batch_size=32)
    whole, info_whole = train_dp(_lenet(), fashion, torch.arange(64), config, target_epsilon=4.0,
                                 device=CPU, max_physical_batch_size=128)
    split, info_split = train_dp(_lenet(), fashion, torch.arange(64), config, target_epsilon=4.0,
                                 device=CPU, max_physical_batch_size=5)
    assert info_whole["epsilon"] == info_split["epsilon"]
    moved = 0.0
    for a, b, c in zip(whole.parameters(), split.parameters(), _lenet().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        moved = max(moved, float((a - c).detach().abs().max()))
    assert moved > 1e-3  # the models did train


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_dp_form_validates_and_trains_one_step(fashion, arch: str) -> None:
    bundle = fashion if arch == "lenet5" else fashion.as_view(32, 3)
    width = 0.25 if arch == "mobilenetv2" else 0.125
    torch.manual_seed(0)
    model = build_model(arch, 10, bundle.in_channels, bundle.image_size, width, dp_compatible=True)
    assert ModuleValidator.validate(model, strict=False) == []
    before = [p.detach().clone() for p in model.parameters()]
    one_epoch = replace(TINY, epochs=1, batch_size=8)
    trained, info = train_dp(model, bundle, torch.arange(32), one_epoch, target_epsilon=8.0,
                             device=CPU, max_physical_batch_size=4)
    assert info["epsilon"] <= 8.0 and math.isfinite(info["history"][0]["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.parameters()))


class _CountingMasks(MaskCallback):
    """The pruning chapter's mask keeper, counting the steps it is called after."""

    steps = 0

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        super().after_step(model)


def test_mask_callback_keeps_pruned_weights_at_zero(fashion) -> None:
    model = _lenet()
    mask = torch.rand_like(model.features[0].weight) > 0.5
    apply_masks(model, {"features.0": mask})
    keeper = _CountingMasks({"features.0": mask})
    kept = model.features[0].weight.detach().clone()
    train_dp(model, fashion, torch.arange(64), TINY, target_epsilon=4.0, device=CPU,
             mask_callback=keeper, max_physical_batch_size=8)
    weight = model.features[0].weight.detach()
    assert keeper.steps == 8  # once per logical batch (2 epochs x 4), not per physical batch
    assert torch.all(weight[~mask] == 0)
    assert not torch.equal(weight[mask], kept[mask])


class _Interrupt:
    def __init__(self, at_step: int) -> None:
        self.at_step, self.steps = at_step, 0

    def after_step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.steps == self.at_step:
            raise KeyboardInterrupt


def test_killed_run_resumes_to_the_same_weights_and_epsilon(fashion, tmp_path) -> None:
    config = replace(TINY, epochs=3)
    members = torch.arange(64)
    reference, ref_info = train_dp(_lenet(), fashion, members, config, target_epsilon=4.0, device=CPU)
    checkpoint = tmp_path / "dp.partial.pt"
    with pytest.raises(KeyboardInterrupt):  # killed in the third epoch (steps 9-12)
        train_dp(_lenet(), fashion, members, config, target_epsilon=4.0, device=CPU,
                 checkpoint_path=checkpoint, mask_callback=_Interrupt(10))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed, info = train_dp(_lenet(), fashion, members, config, target_epsilon=4.0, device=CPU,
                             checkpoint_path=checkpoint)
    assert [row["epoch"] for row in info["history"]] == [0, 1, 2]
    assert info["epsilon"] == ref_info["epsilon"]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("epsilon", [-1, 0, float("nan"), float("inf"), "four"])
def test_bad_epsilon_is_a_one_line_user_error(fashion, epsilon) -> None:
    fragment = "epsilon .* (must be > 0|must be a finite number|is not a number): use e.g. --epsilon 4"
    with pytest.raises(UserError, match=fragment):
        train_dp(_lenet(), fashion, torch.arange(64), TINY, target_epsilon=epsilon, device=CPU)
    with pytest.raises(UserError) as caught:
        check_epsilon(epsilon)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("delta", [0, -1e-5, 1 / 64, 0.5, "tiny"])
def test_bad_delta_is_a_one_line_user_error(fashion, delta) -> None:
    with pytest.raises(UserError, match="delta .*: use e.g. --delta 0.001"):
        train_dp(_lenet(), fashion, torch.arange(64), TINY, target_epsilon=4.0, delta=delta,
                 device=CPU)
    assert check_delta(1e-5, 64) == 1e-5


@pytest.mark.parametrize("model,fragment", [
    (build_model("resnet18", 10, 1, 28, width=0.125), "BatchNorm"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU(inplace=True)), "in-place"),
])
def test_non_dp_model_names_the_fix(fashion, model: nn.Module, fragment: str) -> None:
    with pytest.raises(UserError, match=f"{fragment}.*build_model\\(..., dp_compatible=True\\)"):
        train_dp(model, fashion, torch.arange(64), TINY, target_epsilon=4.0, device=CPU)


def test_prune_reparametrisation_is_refused(fashion) -> None:
    model = _lenet()
    torch.nn.utils.prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    with pytest.raises(UserError, match="prune.remove"):
        train_dp(model, fashion, torch.arange(64), TINY, target_epsilon=4.0, device=CPU)


def test_validate_dp_params_fills_defaults_and_rejects_bad_values() -> None:
    assert validate_dp_params({}) == {"epsilon": 4.0, "delta": None, "max_grad_norm": 1.0}
    assert validate_dp_params({"epsilon": "2", "delta": 1e-5, "sparsity": 0.5}, 500) == {
        "epsilon": 2.0, "delta": 1e-5, "max_grad_norm": 1.0, "sparsity": 0.5}
    for bad in ({"epsilon": -1}, {"max_grad_norm": 0}, {"delta": 0.01}, {"delta": 2.0}):
        with pytest.raises(UserError):
            validate_dp_params(bad, 500)
    with pytest.raises(UserError, match="epsilon -1 must be > 0: use e.g. --epsilon 4"):
        validate_dp_params({"epsilon": -1})


def test_dp_defence_records_privacy_and_caches_it(monkeypatch) -> None:
    tiny = Scale("ci", {"lenet5": ArchScale(n_members=64, epochs=2, width=0.5)})
    monkeypatch.setattr(context, "get_scale", lambda name=None: tiny)
    monkeypatch.setitem(registry.DEFENSES, "dp", train_dp_target)
    monkeypatch.setitem(registry.DEFENSE_PARAMS, "dp", ("epsilon", "delta", "max_grad_norm"))
    monkeypatch.setitem(registry.PARAM_VALIDATORS, "dp", validate_dp_params)
    with pytest.raises(UserError, match=r"--epsilon -2.0 is out of range: use a finite number > 0"):
        experiments.validate_spec(context.ExperimentSpec("lenet5", "fashion-mnist", defense="dp",
                                                         params={"epsilon": -2.0}))
    spec = context.ExperimentSpec("lenet5", "fashion-mnist", defense="dp",
                                  params={"epsilon": 2.0, "delta": 1e-4})
    first = experiments.run_experiment(spec)
    again = experiments.run_experiment(spec)
    assert first["cached"] is False and again["cached"] is True
    for key in ("epsilon", "delta", "noise_multiplier", "sample_rate"):
        assert first[key] == again[key]
    assert 1.99 <= first["epsilon"] <= 2.0 and first["delta"] == 1e-4
    assert first["train_config"]["optimizer"] == "sgd"
    assert first["train_config"]["batch_size"] == dp_train_config(TrainConfig()).batch_size


def test_dp_models_cached_under_an_older_spelling_are_found(monkeypatch, tmp_path) -> None:
    """DP models are keyed on canonical parameters; one cached under the raw spelling that
    earlier versions used (``{"epsilon": 2}``) is found, not trained again."""
    import mcmia_helpers.defences.dp as dp_module

    tiny = Scale("ci", {"lenet5": ArchScale(n_members=64, epochs=2, width=0.5)})
    monkeypatch.setattr(context, "get_scale", lambda name=None: tiny)
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path))
    ctx = context.prepare(context.ExperimentSpec("lenet5", "fashion-mnist", defense="dp",
                                                 params={"epsilon": 2}))
    with monkeypatch.context() as old_code:  # the key as it was: the raw parameters
        old_code.setattr(dp_module, "canonical_params", lambda defense, params: dict(params))
        old_model, old = train_dp_target(ctx)
    assert old["cached"] is False
    model, info = train_dp_target(ctx)
    assert info["cached"] is True
    assert all(torch.equal(a, b) for a, b in zip(old_model.state_dict().values(),
                                                 model.state_dict().values()))
    respelled = replace(ctx, spec=replace(ctx.spec, params={"epsilon": 2.0, "max_grad_norm": 1.0}))
    assert train_dp_target(respelled)[1]["cached"] is True
