"""Tests for mcmia_helpers.shadow: batched shadow training equals sequential training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcmia_helpers.data import load_dataset
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import ARCHITECTURES, build_model
from mcmia_helpers.shadow import (GroupedNet, ShadowSpec, load_or_train_models, predict_logits_many,
                                  stack_states, train_models_batched, train_models_sequential)
from mcmia_helpers.training import TrainConfig, predict_logits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bundle():
    return load_dataset("digits")


def _lenet(bundle):
    return lambda: build_model("lenet5", bundle.num_classes, bundle.in_channels, bundle.image_size)


def _index_sets(sizes, seed=0, n_total=1797):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_total, generator=gen)[:n] for n in sizes]


def _assert_same_models(a, b, bundle, atol=1e-4):
    query = torch.arange(100, 164)
    for model_a, model_b in zip(a, b):
        torch.testing.assert_close(predict_logits(model_a, bundle, query, device=CPU),
                                   predict_logits(model_b, bundle, query, device=CPU), atol=atol, rtol=1e-4)
        for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
            torch.testing.assert_close(pa.float(), pb.float(), atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("config", [
    TrainConfig(epochs=2, batch_size=32, optimizer="adam", lr=1e-3),
    TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="cosine"),
], ids=["adam", "sgd-wd-cosine"])
def test_batched_equals_sequential(bundle, config: TrainConfig) -> None:
    index_sets = _index_sets([80, 80, 80])
    seeds = [5, 6, 7]
    seq_hist, bat_hist = [], []
    sequential = train_models_sequential(_lenet(bundle), 3, bundle, index_sets, config, seeds,
                                         device=CPU, histories=seq_hist)
    batched = train_models_batched(_lenet(bundle), 3, bundle, index_sets, config, seeds,
                                   device=CPU, histories=bat_hist)
    _assert_same_models(sequential, batched, bundle)
    for hs, hb in zip(seq_hist, bat_hist):
        assert [r["epoch"] for r in hs] == [r["epoch"] for r in hb]
        assert hs[-1]["loss"] == pytest.approx(hb[-1]["loss"], rel=1e-4)
    # different seeds give different models (the seeds reach both init and data order)
    assert not torch.allclose(batched[0].classifier[-1].weight, batched[1].classifier[-1].weight)


def test_unequal_sizes_and_augmentation_match_sequential(bundle) -> None:
    config = TrainConfig(epochs=1, batch_size=16, augment=True)
    index_sets = _index_sets([48, 32, 48], seed=1)
    seeds = [1, 2, 3]
    sequential = train_models_sequential(_lenet(bundle), 3, bundle, index_sets, config, seeds, device=CPU)
    batched = train_models_batched(_lenet(bundle), 3, bundle, index_sets, config, seeds, device=CPU,
                                   max_group=2)
    _assert_same_models(sequential, batched, bundle)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grouped_step_is_exact_in_float64(arch: str) -> None:
    """Forward, gradients and BatchNorm running statistics of the grouped network equal those of
    each model on its own (float64, so rounding cannot hide a mistake)."""
    torch.manual_seed(0)
    width = 1.0 if arch == "lenet5" else 0.125
    models = [build_model(arch, 10, 3, 32, width=width).double() for _ in range(2)]
    net = GroupedNet.try_build(copy.deepcopy(models[0]).float(), torch.randn(2, 3, 32, 32))
    assert net is not None
    params, buffers = stack_states(models)
    x = torch.randn(2, 6, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (2, 6))
    out = net.forward(params, buffers, x, training=True)
    F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(2, -1).mean(1).sum().backward()
    for i, model in enumerate(models):
        model.train()
        ref = model(x[i])
        F.cross_entropy(ref, y[i]).backward()
        torch.testing.assert_close(out[i], ref, atol=1e-10, rtol=1e-9)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name].grad[i], p.grad, atol=1e-10, rtol=1e-8, msg=name)
        for name, b in model.named_buffers():
            torch.testing.assert_close(buffers[name][i], b, atol=1e-10, rtol=1e-9, msg=name)


class _Doubling(nn.Module):
    """A model whose forward is not its layers in order: must not be run grouped."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4, 10)

    def forward(self, x):
        return self.classifier(self.features(x) * 2)


class _WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(28 * 28, 10))

    def forward(self, x):
        return self.net(x)


def test_unsupported_models_fall_back_to_sequential(bundle) -> None:
    example = torch.randn(2, 1, 28, 28)
    assert GroupedNet.try_build(_Doubling(), example) is None
    assert GroupedNet.try_build(_WithDropout(), example) is None
    config = TrainConfig(epochs=1, batch_size=16)
    index_sets = _index_sets([32, 32], seed=2)
    sequential = train_models_sequential(_Doubling, 2, bundle, index_sets, config, [1, 2], device=CPU)
    batched = train_models_batched(_Doubling, 2, bundle, index_sets, config, [1, 2], device=CPU)
    _assert_same_models(sequential, batched, bundle, atol=1e-6)


def test_predict_logits_many_matches_predict_logits(bundle) -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(_lenet(bundle)().eval())
    query = torch.arange(50)
    together = predict_logits_many(models, bundle, query, batch_size=16, device=CPU, max_group=2)
    assert together.shape == (3, 50, bundle.num_classes)
    assert predict_logits_many(models, bundle, query[:0], device=CPU).shape == (3, 0, bundle.num_classes)
    for i, model in enumerate(models):
        torch.testing.assert_close(together[i], predict_logits(model, bundle, query, device=CPU),
                                   atol=1e-5, rtol=1e-5)


def test_cache_loads_and_keys_on_seed_and_indices(bundle, tmp_path) -> None:
    config = TrainConfig(epochs=1, batch_size=16)
    sets = _index_sets([32, 32], seed=3)
    specs = [ShadowSpec(sets[0], 1), ShadowSpec(sets[1], 2)]
    base = {"arch": "lenet5", "dataset": "digits"}
    def load(specs):
        return load_or_train_models(base, _lenet(bundle), bundle, specs, config, device=CPU, cache=tmp_path)

    first, info = load(specs)
    assert info["trained"] == 2 and info["cached"] == 0
    again, info = load(specs)
    assert info["trained"] == 0 and info["cached"] == 2
    _assert_same_models(first, again, bundle, atol=0)
    changed = [ShadowSpec(sets[0], 1), ShadowSpec(sets[1], 99)]  # another seed
    _, info = load(changed)
    assert info["trained"] == 1 and info["cached"] == 1
    assert len(list(tmp_path.glob("*.pt"))) == 3
    # the same seed on other indices (one example swapped for one outside the set) is another model
    outside = next(i for i in range(len(bundle)) if i not in set(sets[0].tolist()))
    swapped = torch.cat([sets[0][:-1], torch.tensor([outside])])
    other, info = load([ShadowSpec(swapped, 1), ShadowSpec(sets[1], 2)])
    assert info["trained"] == 1 and info["cached"] == 1
    assert len(list(tmp_path.glob("*.pt"))) == 4
    assert not torch.equal(other[0].state_dict()["features.0.weight"],
                           first[0].state_dict()["features.0.weight"])
    _assert_same_models(other[1:], first[1:], bundle, atol=0)


def test_bad_arguments_raise_user_errors(bundle) -> None:
    config = TrainConfig(epochs=1)
    with pytest.raises(UserError, match="one index set and one seed per model"):
        train_models_batched(_lenet(bundle), 2, bundle, _index_sets([8]), config, [1, 2])
    with pytest.raises(UserError, match="empty"):
        train_models_batched(_lenet(bundle), 1, bundle, [torch.tensor([], dtype=torch.long)], config, [1])
