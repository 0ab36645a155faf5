"""The four architectures of the MCMIA paper: LeNet-5, VGG16, MobileNetV2 and ResNet18.

Introduced in the chapter on target models. ``build_model`` returns the small-image (CIFAR)
form for ``image_size <= 64`` and the ImageNet form above, optionally narrowed by a width
multiplier (for quick runs) and in a DP-compatible form for Opacus DP-SGD (GroupNorm instead
of BatchNorm, no in-place operations).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torchvision import models as tv_models
from torchvision.models._utils import _make_divisible

from mcmia_helpers.errors import UserError

ARCHITECTURES: tuple[str, ...] = ("lenet5", "vgg16", "mobilenetv2", "resnet18")

_SMALL_IMAGE_MAX = 64  # image_size up to this gets the CIFAR form, above it the ImageNet form

Norm = Callable[[int], nn.Module]


def _norm_layer(dp_compatible: bool) -> Norm:
    """BatchNorm2d, or GroupNorm when the model must work with per-sample gradients."""
    if not dp_compatible:
        return nn.BatchNorm2d
    # BatchNorm mixes samples of a batch, which DP-SGD forbids. gcd(channels, 32) always divides
    # the channel count (any width multiplier), uses the usual 32 groups of Wu & He when it can,
    # and is the rule of Opacus' ModuleValidator.fix, so our models match the documented route.
    return lambda channels: nn.GroupNorm(math.gcd(channels, 32), channels)


def _scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier, never below one."""
    return max(1, round(channels * width))


class LeNet5(nn.Module):
    """Classic LeNet-5 with ReLU and max pooling (61,706 parameters on 28x28 MNIST).

    Inputs smaller than 32x32 get padding 2 in the first conv (the usual way of feeding
    MNIST to LeNet-5); the flatten size follows from ``image_size``.
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: float):
        super().__init__()
        c1, c2, h1, h2 = (_scaled(c, width) for c in (6, 16, 120, 84))
        padding = 2 if image_size < 32 else 0
        side = ((image_size + 2 * padding - 4) // 2 - 4) // 2  # two (conv 5x5, pool 2) stages
        if side < 1:
            raise UserError(f"image_size {image_size} is too small for lenet5: use at least 12")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, h1), nn.ReLU(),
            nn.Linear(h1, h2), nn.ReLU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Small(nn.Module):
    """VGG16 with BatchNorm and a single linear classifier, as in kuangliu's pytorch-cifar.

    14,728,266 parameters at width 1 on 3x32x32 with 10 classes. Max pools use
    ``ceil_mode=True`` and the features end in a global average pool, so 28x28 inputs work
    too (28 -> 14 -> 7 -> 4 -> 2 -> 1) without changing the parameter count.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, norm: Norm):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            out = _scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), norm(out), nn.ReLU()]
            channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block in kuangliu's layout: expand 1x1, depthwise 3x3, project 1x1.

    Every stride-1 block has a shortcut, a 1x1 projection when the width changes.
    """

    def __init__(self, in_c: int, out_c: int, expansion: int, stride: int, norm: Norm):
        super().__init__()
        hidden = expansion * in_c
        self.body = nn.Sequential(
            nn.Conv2d(in_c, hidden, 1, bias=False), norm(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            norm(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, out_c, 1, bias=False), norm(out_c),
        )
        self.stride = stride
        self.shortcut = nn.Identity()
        if stride == 1 and in_c != out_c:
            self.shortcut = nn.Sequential(nn.Conv2d(in_c, out_c, 1, bias=False), norm(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


# (expansion, out channels, blocks, first stride); the second group's stride is 1, not 2 (CIFAR)
_MOBILENETV2_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2Small(nn.Module):
    """MobileNetV2 for small images, the CIFAR adaptation of kuangliu's pytorch-cifar.

    First conv stride 1 and second block group stride 1 (total stride 8); blocks as in
    ``_InvertedResidual`` (ReLU6 in place of kuangliu's ReLU, which changes no parameter).
    2,296,922 parameters at width 1 on 3x32x32 with 10 classes. Channels under a width
    multiplier are rounded to multiples of 8, the last conv is never narrowed (torchvision's rule).
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, norm: Norm):
        super().__init__()
        channels = _make_divisible(32 * width, 8)
        last = _make_divisible(1280 * max(1.0, width), 8)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), norm(channels), nn.ReLU6()]
        for expansion, out, blocks, stride in _MOBILENETV2_CFG:
            out = _make_divisible(out * width, 8)
            for i in range(blocks):
                block_stride = stride if i == 0 else 1
                layers.append(_InvertedResidual(channels, out, expansion, block_stride, norm))
                channels = out
        layers += [nn.Conv2d(channels, last, 1, bias=False), norm(last), nn.ReLU6(),
                   nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_c: int, out_c: int, stride: int, norm: Norm):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False), norm(out_c), nn.ReLU(),
            nn.Conv2d(out_c, out_c, 3, 1, 1, bias=False), norm(out_c),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_c != out_c:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_c, out_c, 1, stride, bias=False), norm(out_c))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out + self.shortcut(x)  # not `+=`: in-place additions break Opacus hooks
        return self.relu(out)


class ResNet18(nn.Module):
    """ResNet18 with BasicBlocks [2, 2, 2, 2].

    The CIFAR stem (3x3 conv, stride 1, no max pool; 11,173,962 parameters at width 1, 3x32x32,
    10 classes) or the ImageNet stem (7x7 conv stride 2 + 3x3 max pool; 11,689,512 parameters
    at width 1 with 1000 classes, the same as torchvision's resnet18).
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, norm: Norm,
                 imagenet: bool):
        super().__init__()
        stage_channels = [_scaled(c, width) for c in (64, 128, 256, 512)]
        channels = stage_channels[0]
        if imagenet:
            stem = [nn.Conv2d(in_channels, channels, 7, 2, 3, bias=False), norm(channels),
                    nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), norm(channels),
                    nn.ReLU()]
        layers: list[nn.Module] = stem
        for stage, out in enumerate(stage_channels):
            for i in range(2):
                layers.append(BasicBlock(channels, out, 2 if stage > 0 and i == 0 else 1, norm))
                channels = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh copy of ``conv`` that reads ``in_channels`` channels."""
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, bias=conv.bias is not None)


def _make_dp_compatible(module: nn.Module) -> None:
    """Swap every BatchNorm2d for GroupNorm and turn off in-place ops (torchvision models)."""
    norm = _norm_layer(dp_compatible=True)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, norm(child.num_features))
        else:
            _make_dp_compatible(child)
        if hasattr(child, "inplace"):
            child.inplace = False


def _torchvision_model(arch: str, num_classes: int, in_channels: int, width: float) -> nn.Module:
    """The ImageNet forms of vgg16 and mobilenetv2, untrained, from torchvision."""
    if arch == "vgg16":
        if width != 1.0:
            raise UserError("width multipliers are only available for the small-image forms of "
                            "vgg16: use width=1.0 or image_size <= 64")
        model = tv_models.vgg16_bn(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.features[0] = _replace_first_conv(model.features[0], in_channels)
        return model
    model = tv_models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
    if in_channels != 3:
        model.features[0][0] = _replace_first_conv(model.features[0][0], in_channels)
    return model


def build_model(arch: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                width: float = 1.0, dp_compatible: bool = False) -> nn.Module:
    """Build one of the paper's four architectures, untrained.

    ``image_size <= 64`` gives the small-image (CIFAR) form, larger sizes the ImageNet form.
    ``width`` multiplies every channel count (0.25 for quick runs). ``dp_compatible=True``
    gives the form that Opacus DP-SGD accepts: GroupNorm instead of BatchNorm, no in-place
    operations. The returned model carries its name in ``model.arch``.
    """
    name = arch.lower() if isinstance(arch, str) else arch
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHITECTURES)}")
    if not width > 0:
        raise UserError(f"width must be positive (got {width}): use 1.0 for the paper's size, "
                        "0.25 for a quick run")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2 (got {num_classes})")
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1 (got {in_channels}): use 1 for "
                        "grayscale images, 3 for colour")
    if image_size < 1:
        raise UserError(f"image_size must be positive (got {image_size}): use the side of "
                        "the square input images, e.g. 28 or 32")

    imagenet = image_size > _SMALL_IMAGE_MAX
    norm = _norm_layer(dp_compatible)
    if name == "lenet5":
        model: nn.Module = LeNet5(num_classes, in_channels, image_size, width)
    elif name == "resnet18":
        model = ResNet18(num_classes, in_channels, width, norm, imagenet)
    elif imagenet:
        model = _torchvision_model(name, num_classes, in_channels, width)
        if dp_compatible:
            _make_dp_compatible(model)
    elif name == "vgg16":
        model = VGG16Small(num_classes, in_channels, width, norm)
    else:
        model = MobileNetV2Small(num_classes, in_channels, width, norm)
    model.arch = name
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) counted from the weights themselves (all parameters).

    For a layer pruned with ``torch.nn.utils.prune`` (``weight_orig`` plus a mask) the
    effective masked ``weight`` is counted, so pruning shows up in the nonzero count.
    """
    total = nonzero = 0
    modules = dict(model.named_modules())
    for full_name, param in model.named_parameters():
        owner_name, _, attr = full_name.rpartition(".")
        owner = modules[owner_name]
        masked = getattr(owner, attr.removesuffix("_orig"), None)  # set by prune, else None
        tensor = masked if attr.endswith("_orig") and isinstance(masked, torch.Tensor) else param
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor.detach()))
    return total, nonzero


# --------------------------------------------------------------------------- inference model

#: The smallest probability kept in log features (log = -46), by the inference model and the
#: attack features.
LOG_PROB_FLOOR = 1e-20


class InferenceModel(nn.Module):
    """Nasr et al.'s (2018) inference model: is ``(softmax output, label)`` a training member?

    Two branches, one for the posterior vector and one for the one-hot label, joined by fully
    connected layers that end in one logit (higher = member). The widths follow Nasr et al.'s
    layout scaled by ``hidden``: posterior ``C -> 4h -> 2h -> h``, label ``C -> 2h -> h``, joint
    ``2h -> 4h -> h -> 1``. With ``log_features`` (default) the posterior branch also sees
    ``log p`` (floored at 1e-20 and scaled to [-1, 0]), which keeps confident outputs apart
    that raw probabilities round to 1; ``log_features=False`` is Nasr et al.'s exact input.

    Public and stable: the Min-Max defence trains against it (``forward`` is differentiable in
    ``probs``).
    """

    def __init__(self, num_classes: int, hidden: int = 64, log_features: bool = True):
        super().__init__()
        if num_classes < 2 or hidden < 1:
            raise UserError(f"InferenceModel needs num_classes >= 2 and hidden >= 1 "
                            f"(got {num_classes}, {hidden})")
        self.num_classes = num_classes
        self.log_features = log_features
        width_in = num_classes * (2 if log_features else 1)
        self.posterior = nn.Sequential(nn.Linear(width_in, 4 * hidden), nn.ReLU(),
                                       nn.Linear(4 * hidden, 2 * hidden), nn.ReLU(),
                                       nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.label = nn.Sequential(nn.Linear(num_classes, 2 * hidden), nn.ReLU(),
                                   nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.joint = nn.Sequential(nn.Linear(2 * hidden, 4 * hidden), nn.ReLU(),
                                   nn.Linear(4 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Membership logits ``(B,)`` for softmax outputs ``probs (B, C)`` and labels ``onehot (B, C)``."""
        x = probs
        if self.log_features:
            x = torch.cat([probs, torch.log(probs + LOG_PROB_FLOOR) / -math.log(LOG_PROB_FLOOR)], dim=-1)
        h = torch.cat([self.posterior(x), self.label(onehot.to(probs.dtype))], dim=-1)
        return self.joint(h).squeeze(-1)
