"""Each pruning algorithm is written once (issue 26): the one-model path and the zoo's stacked
path call the same projection, magnitude masks and ADMM state, and agree with
``torch.nn.utils.prune`` where that library does the same thing. Small tensors: milliseconds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import prune

from mcmia_helpers.defences import pruning as P
from mcmia_helpers.models import build_model
from mcmia_helpers.zoo import grouped


def _lenets(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_model("lenet5", num_classes=10, in_channels=1, image_size=28))
    return out


def _stack(models, names) -> dict[str, torch.Tensor]:
    return {f"{n}.weight": torch.stack([dict(m.named_modules())[n].weight.detach() for m in models])
            for n in names}


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_masks_are_torch_prunes_masks(sparsity) -> None:
    (model,) = _lenets(1)
    layers = P.prunable_layers(model)
    ours = P.magnitude_masks({n: m.weight.detach().unsqueeze(0) for n, m in layers.items()}, sparsity)
    reference = copy.deepcopy(model)
    ref_layers = P.prunable_layers(reference)
    total = sum(m.weight.numel() for m in ref_layers.values())
    prune.global_unstructured([(m, "weight") for m in ref_layers.values()],
                              pruning_method=prune.L1Unstructured, amount=int(round(sparsity * total)))
    for name, module in ref_layers.items():
        assert torch.equal(ours[name][0], module.weight_mask.bool()), name
    # per layer: torch's l1_unstructured with the n_pruned amount
    per_layer = P.magnitude_masks({n: m.weight.detach().unsqueeze(0) for n, m in layers.items()},
                                  {n: sparsity for n in layers})
    for name, module in layers.items():
        ref = copy.deepcopy(module)
        prune.l1_unstructured(ref, "weight", amount=P.n_pruned(module.weight.numel(), sparsity))
        assert torch.equal(per_layer[name][0], ref.weight_mask.bool()), name
        assert torch.equal(P.project(module.weight, sparsity), ref.weight_mask.bool()), name


def test_a_second_round_on_masked_weights_is_torch_prunes_iterative_mask() -> None:
    (model,) = _lenets(1)
    layers = P.prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    reference = copy.deepcopy(model)
    ref_layers = P.prunable_layers(reference)
    first = P.magnitude_masks({n: m.weight.detach().unsqueeze(0) for n, m in layers.items()}, 0.5)
    P.apply_masks(model, {n: m[0] for n, m in first.items()})
    prune.global_unstructured([(m, "weight") for m in ref_layers.values()],
                              pruning_method=prune.L1Unstructured, amount=int(round(0.5 * total)))
    with torch.no_grad():  # the weights move between rounds (fine-tuning), the same way in both
        gen = torch.Generator().manual_seed(1)
        for name, module in layers.items():
            step = 0.01 * torch.randn(module.weight.shape, generator=gen)
            module.weight.add_(step).mul_(first[name][0])
            ref_layers[name].weight_orig.add_(step)
    # torch ranks ``module.weight`` as its forward pre-hook last computed it: refresh it first
    # (after fine-tuning it is one optimiser step old, which the old one-model path ranked)
    reference(torch.zeros(1, 1, 28, 28))
    second = P.magnitude_masks({n: m.weight.detach().unsqueeze(0) for n, m in layers.items()}, 0.8)
    already = sum(int((m.weight_mask == 0).sum()) for m in ref_layers.values())
    prune.global_unstructured([(m, "weight") for m in ref_layers.values()],
                              pruning_method=prune.L1Unstructured,
                              amount=int(round(0.8 * total)) - already)
    for name, module in ref_layers.items():
        assert torch.equal(second[name][0], module.weight_mask.bool()), name
        assert not (second[name][0] & ~first[name][0]).any()  # pruned weights stay pruned


def test_stacked_masks_are_each_models_own() -> None:
    models = _lenets(3)
    names = list(P.prunable_layers(models[0]))
    stacked = P.magnitude_masks(_stack(models, names), 0.8)
    for i, model in enumerate(models):
        alone = P.magnitude_masks(_stack([model], names), 0.8)
        for key in stacked:
            assert torch.equal(stacked[key][i], alone[key][0])
    weight = _stack(models, names)[f"{names[1]}.weight"]
    rows = P.project_rows(weight, 0.7)
    for i in range(3):
        assert torch.equal(rows[i], P.project(weight[i], 0.7))


def test_zoo_and_one_model_admm_are_one_algorithm() -> None:
    """Two models stacked, stepped by the zoo's StackedADMM, end with each model's Z, U and rho
    of the one-model ADMMCallback stepped on the same weights: the same state class does both."""
    models = _lenets(2)
    targets = {n: 0.8 for n in P.prunable_layers(models[0])}
    params = {k: v.clone().requires_grad_(True) for k, v in _stack(models, targets).items()}
    zoo = grouped.StackedADMM(params, targets, 1e-2, 2.0, 1.0)
    single = [P.ADMMCallback(m, targets, 1e-2, 2.0, 1.0) for m in models]
    assert type(zoo.state) is type(single[0].state) is P.ADMMState
    gen = torch.Generator().manual_seed(2)
    for epoch in range(3):
        with torch.no_grad():
            for key, value in params.items():
                step = 0.05 * torch.randn(value.shape, generator=gen)
                value.add_(step)
                for i, model in enumerate(models):
                    dict(model.named_modules())[key.removesuffix(".weight")].weight.add_(step[i])
        penalty = zoo.extra_loss(params)
        singles = [cb.extra_loss(m, None, None, None) for cb, m in zip(single, models)]
        torch.testing.assert_close(penalty, sum(singles))
        zoo.epoch_end(epoch, params)
        for cb, m in zip(single, models):
            cb.epoch_end(epoch, m)
    for i, cb in enumerate(single):
        assert cb.rho == zoo.rho == pytest.approx(1e-2 * 2.0 ** 3)
        for name in targets:
            assert torch.equal(cb.Z[name], zoo.state.Z[f"{name}.weight"][i])
            torch.testing.assert_close(cb.U[name], zoo.state.U[f"{name}.weight"][i], rtol=0, atol=0)
        masks = cb.hard_masks(models[i])
        for name, mask in zoo.hard_masks(params).items():
            assert torch.equal(mask[i], masks[name.removesuffix(".weight")])
    # the one-model checkpoint keeps its form (no model dimension) and resumes exactly
    again = P.ADMMCallback(models[0], targets, 1e-2, 2.0, 1.0)
    again.load_state_dict(single[0].state_dict())
    assert again.rho == single[0].rho and again.updates == 3
    for name in targets:
        assert single[0].state_dict()["Z"][name].shape == dict(models[0].named_modules())[name].weight.shape
        assert torch.equal(again.Z[name], single[0].Z[name])
