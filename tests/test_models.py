"""Tests for mcmia_helpers.models: shapes, known parameter counts, DP form, errors."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.utils import prune

from mcmia_helpers.errors import UserError
from mcmia_helpers.models import ARCHITECTURES, build_model, count_parameters

SMALL_INPUTS = [(1, 28), (3, 32)]  # (channels, side): MNIST-like and CIFAR-like


def _assert_dp_ready(model: nn.Module) -> None:
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("channels,side", SMALL_INPUTS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shape(arch: str, channels: int, side: int, num_classes: int) -> None:
    model = build_model(arch, num_classes, in_channels=channels, image_size=side, width=0.25)
    assert model.arch == arch
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, side, side))
    assert out.shape == (2, num_classes)


@pytest.mark.parametrize("arch,kwargs,expected", [
    ("lenet5", dict(in_channels=1, image_size=28), 61_706),
    ("vgg16", dict(in_channels=3, image_size=32), 14_728_266),
    ("mobilenetv2", dict(in_channels=3, image_size=32), 2_296_922),
    ("resnet18", dict(in_channels=3, image_size=32), 11_173_962),
    ("resnet18", dict(in_channels=3, image_size=224, num_classes=1000), 11_689_512),
])
def test_known_parameter_counts(arch: str, kwargs: dict, expected: int) -> None:
    total, nonzero = count_parameters(build_model(arch, **kwargs))
    assert total == expected
    assert 0 < nonzero <= total


def test_dp_form_keeps_parameter_count() -> None:
    plain = build_model("resnet18", in_channels=3, image_size=32, width=0.25)
    dp = build_model("resnet18", in_channels=3, image_size=32, width=0.25, dp_compatible=True)
    assert count_parameters(plain)[0] == count_parameters(dp)[0]


def test_imagenet_forward_once() -> None:
    model = build_model("resnet18", num_classes=7, in_channels=3, image_size=224, width=0.25).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_width_reduces_parameters(arch: str) -> None:
    full = count_parameters(build_model(arch, in_channels=3, image_size=32))[0]
    narrow = count_parameters(build_model(arch, in_channels=3, image_size=32, width=0.25))[0]
    assert narrow < full / 4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dp_small_form_is_valid(arch: str) -> None:
    model = build_model(arch, in_channels=3, image_size=32, width=0.25, dp_compatible=True)
    _assert_dp_ready(model)


@pytest.mark.parametrize("arch", ["vgg16", "mobilenetv2", "resnet18"])
def test_dp_imagenet_form_is_valid(arch: str) -> None:
    model = build_model(arch, num_classes=1000, in_channels=1, image_size=224, dp_compatible=True)
    _assert_dp_ready(model)


def test_plain_torchvision_form_keeps_batchnorm() -> None:
    model = build_model("mobilenetv2", in_channels=1, image_size=224)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.features[0][0].in_channels == 1


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # inputs need no grad
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_dp_form_gives_per_sample_gradients(arch: str) -> None:
    model = GradSampleModule(build_model(arch, in_channels=1, image_size=28, width=0.25,
                                         dp_compatible=True))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 1]))
    loss.backward()
    for param in model.parameters():
        assert param.grad_sample is not None and param.grad_sample.shape[0] == 2


def test_count_parameters_sees_pruning() -> None:
    model = build_model("lenet5")
    total, _ = count_parameters(model)
    prune.l1_unstructured(model.features[0], "weight", amount=0.5)
    pruned_total, pruned_nonzero = count_parameters(model)
    assert pruned_total == total
    assert pruned_nonzero <= total - model.features[0].weight.numel() // 2


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(arch="alexnet"), "unknown architecture 'alexnet': choose one of lenet5, vgg16"),
    (dict(arch="resnet18", width=0), "width must be positive"),
    (dict(arch="resnet18", num_classes=1), "num_classes must be at least 2"),
    (dict(arch="resnet18", in_channels=0), "in_channels must be at least 1"),
    (dict(arch="vgg16", image_size=224, width=0.5), "only available for the small-image forms"),
    (dict(arch="lenet5", image_size=8), "too small for lenet5"),
])
def test_bad_inputs_raise_user_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        build_model(**kwargs)
