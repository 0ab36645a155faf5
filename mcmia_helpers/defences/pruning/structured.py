"""Structured pruning: whole filters removed, a narrower dense model."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import nn

from mcmia_helpers.defences.compression import compression_report
from mcmia_helpers.defences.pruning.profiles import check_sparsity
from mcmia_helpers.errors import UserError
from mcmia_helpers.models import VGG16Small

#: The structured choice, L1-norm filter pruning (Li et al. 2017) of the small-image VGG16.
STRUCTURED = "filter"


def _check_vgg(model: nn.Module) -> None:
    """A one-line :class:`UserError` unless ``model`` is the small-image VGG16."""
    if not isinstance(model, VGG16Small):
        raise UserError(f"filter pruning is implemented for the small-image vgg16 only (got "
                        f"{type(model).__name__}): use build_model('vgg16', image_size=32)")


def _kept(channels: int, ratio: float) -> int:
    """How many of a convolution's ``channels`` filters stay at filter ratio ``ratio`` (>= 1)."""
    return max(1, channels - int(round(ratio * channels)))


def _keep_filters(conv: nn.Conv2d, ratio: float) -> torch.Tensor:
    """Indices (sorted) of the output filters with the largest L1 norms, ``1 - ratio`` of them."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.topk(norms, _kept(conv.out_channels, ratio), sorted=False).indices.sort().values


def conv_channels(model: nn.Module) -> list[int]:
    """The output width of every convolution of a small-image VGG16, in order: what fixes the
    shapes of a filter-pruned model (with the dense model it came from)."""
    _check_vgg(model)
    return [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]


def filter_channels(model: nn.Module, ratio: float) -> list[int]:
    """The convolution widths :func:`prune_filters_vgg` leaves at ``ratio``: each conv keeps
    ``max(1, c - round(ratio * c))`` of its ``c`` filters."""
    ratio = check_sparsity(ratio)
    return [_kept(c, ratio) for c in conv_channels(model)]


def _check_channels(model: nn.Module, channels: Any) -> list[int]:
    """``channels`` as one width per convolution of ``model``, each in ``[1, dense width]``."""
    dense = conv_channels(model)
    ok = (isinstance(channels, (list, tuple)) and len(channels) == len(dense)
          and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= d
                  for c, d in zip(channels, dense)))
    if not ok:
        raise UserError(f"conv widths {channels!r} do not fit this vgg16 (widths {dense}): give "
                        f"{len(dense)} integers, each between 1 and the dense width")
    return [int(c) for c in channels]


def narrow_param_counts(model: nn.Module, channels: list[int]) -> dict[str, int]:
    """Parameters of ``model``'s narrow form with convolution widths ``channels``, counted from
    ``model``'s own layers (kernel sizes, biases, affine norms, classifier) without building it:
    ``prunable`` (conv and linear weights, what sparsity is measured on) and ``total``."""
    channels = _check_channels(model, channels)
    prunable = total = 0
    width: int | None = None
    convs = iter(channels)
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            out, kh, kw = next(convs), *module.kernel_size
            weights = out * (module.in_channels if width is None else width) * kh * kw
            prunable += weights
            total += weights + (out if module.bias is not None else 0)
            width = out
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
            total += 2 * width
    head = model.classifier
    prunable += head.out_features * width
    total += head.out_features * width + (head.out_features if head.bias is not None else 0)
    return {"prunable": prunable, "total": total}


def filter_budget(model: nn.Module, sparsity: float, steps: int = 4096) -> dict[str, Any]:
    """The filter ratio that gives unstructured pruning's parameter budget at ``sparsity``.

    Unstructured pruning at sparsity ``s`` keeps ``(1 - s)`` of the prunable weights (conv and
    linear weights; biases and norms stay). This searches the ratios ``i / steps`` on
    ``model``'s actual layers (:func:`narrow_param_counts`; no ``(1 - r)**2`` shortcut: the
    first conv's input and the classifier's output do not shrink, and widths are rounded) for
    the narrow model whose prunable weight count is closest to ``(1 - s)`` of the dense one
    (ties: the smaller ratio). Returns ``filter_ratio``, ``filter_channels``,
    ``prunable_dense``, ``prunable_kept``, ``param_share`` (kept / dense prunable weights),
    ``params_dense``, ``params_kept`` and ``param_share_total`` (all parameters).
    """
    sparsity = check_sparsity(sparsity)
    dense_widths = conv_channels(model)
    dense = narrow_param_counts(model, dense_widths)
    target = (1.0 - sparsity) * dense["prunable"]
    best: tuple[float, float, list[int], dict[str, int]] | None = None
    seen: set[tuple[int, ...]] = set()
    for i in range(steps):
        ratio = i / steps
        widths = [_kept(c, ratio) for c in dense_widths]
        if tuple(widths) in seen:
            continue
        seen.add(tuple(widths))
        counts = narrow_param_counts(model, widths)
        gap = abs(counts["prunable"] - target)
        if best is None or gap < best[0]:
            best = (gap, ratio, widths, counts)
    _, ratio, widths, counts = best
    return {"filter_ratio": ratio, "filter_channels": widths,
            "prunable_dense": dense["prunable"], "prunable_kept": counts["prunable"],
            "param_share": counts["prunable"] / dense["prunable"],
            "params_dense": dense["total"], "params_kept": counts["total"],
            "param_share_total": counts["total"] / dense["total"]}


def _slice_norm(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    """``norm`` restricted to channels ``idx`` (BatchNorm sliced; GroupNorm regrouped by gcd)."""
    n = len(idx)
    if isinstance(norm, nn.BatchNorm2d):
        new = nn.BatchNorm2d(n, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        if norm.track_running_stats:
            new.running_mean.copy_(norm.running_mean[idx])
            new.running_var.copy_(norm.running_var[idx])
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    elif isinstance(norm, nn.GroupNorm):
        new = nn.GroupNorm(math.gcd(n, norm.num_groups), n, norm.eps, norm.affine)
    else:
        raise UserError(f"cannot slice a {type(norm).__name__} after a pruned conv: use the "
                        "vgg16 model of build_model")
    if getattr(norm, "affine", False):
        new.weight.data.copy_(norm.weight.detach()[idx])
        new.bias.data.copy_(norm.bias.detach()[idx])
    return new


@torch.no_grad()
def _narrow_vgg(model: nn.Module, select: Callable[[int, nn.Conv2d], torch.Tensor]) -> nn.Module:
    """A copy of VGG16 ``model`` in which conv ``i`` keeps the filters ``select(i, conv)``
    (sorted indices), with their norm channels and the next layer's matching inputs."""
    device = next(model.parameters()).device
    layers: list[nn.Module] = []
    in_idx: torch.Tensor | None = None
    convs = 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            out_idx = select(convs, module)
            convs += 1
            weight = module.weight.detach()[out_idx]
            if in_idx is not None:
                weight = weight[:, in_idx]
            conv = nn.Conv2d(weight.shape[1], len(out_idx), module.kernel_size, module.stride,
                             module.padding, bias=module.bias is not None).to(device)
            conv.weight.copy_(weight)
            if module.bias is not None:
                conv.bias.copy_(module.bias.detach()[out_idx])
            layers.append(conv)
            in_idx = out_idx
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            layers.append(_slice_norm(module, in_idx).to(device))
        else:
            layers.append(copy.deepcopy(module))
    old = model.classifier
    classifier = nn.Linear(len(in_idx), old.out_features, bias=old.bias is not None).to(device)
    classifier.weight.copy_(old.weight.detach()[:, in_idx])
    if old.bias is not None:
        classifier.bias.copy_(old.bias.detach())
    narrow = copy.deepcopy(model)
    narrow.features = nn.Sequential(*layers)
    narrow.classifier = classifier
    narrow.train(model.training)
    return narrow


def prune_filters_vgg(model: nn.Module, ratio: float) -> nn.Module:
    """A narrower copy of a small-image VGG16: ``ratio`` of every conv's filters removed.

    Structured pruning after Li et al. (2017), "Pruning Filters for Efficient ConvNets": in
    each convolution the filters with the smallest L1 norms go, with their norm-layer channels
    and the matching input channels of the next layer (the next conv, or the classifier).
    The result is an ordinary dense model with fewer channels, so it is faster on any CPU
    (unlike unstructured zeros) and can be fine-tuned with :func:`~mcmia_helpers.training.fit`.
    Its widths are :func:`filter_channels` ``(model, ratio)``. ``model`` is left unchanged.
    """
    _check_vgg(model)
    ratio = check_sparsity(ratio)
    return _narrow_vgg(model, lambda i, conv: _keep_filters(conv, ratio))


def vgg_with_channels(model: nn.Module, channels: list[int]) -> nn.Module:
    """The narrow form of VGG16 ``model`` with convolution widths ``channels`` (each conv keeps
    its first filters): the architecture of a filter-pruned model, rebuilt from its recorded
    widths so that its cached weights can be loaded into it (they replace every value).
    GroupNorm layers are regrouped as :func:`prune_filters_vgg` regroups them."""
    channels = _check_channels(model, channels)
    return _narrow_vgg(model, lambda i, conv: torch.arange(channels[i], device=conv.weight.device))


def structured_report(dense: nn.Module, narrow: nn.Module, input_shape: tuple[int, ...],
                      file_sizes: bool = True) -> dict[str, Any]:
    """What filter pruning bought, counted from both models, in the fields of an unstructured
    pruning record (:func:`~mcmia_helpers.defences.compression.compression_report`), so the two
    compare like for like: "dense" is the unpruned ``dense`` model, "sparse" the ``narrow``
    one as it would be shipped. ``sparsity_per_layer`` is the share of each dense layer's
    weights the narrow model no longer has; ``sparsity`` the same over all prunable weights;
    ``compression_ratio(_prunable)`` dense parameters per nonzero kept one; raw and compressed
    file sizes of both; ``flops_dense`` the dense model's MACs and ``flops_effective`` the
    narrow model's (real: no sparse kernel needed). Plus ``params_dense``, ``params_kept``,
    ``param_share`` (kept / dense prunable weights) and ``param_share_total``. ``file_sizes=False``
    leaves the file sizes out, as :func:`~mcmia_helpers.defences.compression.compression_report` does.
    """
    d = compression_report(dense, input_shape, file_sizes=file_sizes)
    n = compression_report(narrow, input_shape, file_sizes=file_sizes)
    report = {
        "sparsity_per_layer": {name: 1.0 - n["layers"][name]["nonzero"] / layer["params"]
                               for name, layer in d["layers"].items()},
        "sparsity_achieved": 1.0 - n["prunable_nonzero"] / d["prunable_total"],
        "params_dense": d["params_total"], "params_kept": n["params_total"],
        "param_share": n["prunable_total"] / d["prunable_total"],
        "param_share_total": n["params_total"] / d["params_total"],
        "compression_ratio": d["params_total"] / max(1, n["params_nonzero"]),
        "compression_ratio_prunable": d["prunable_total"] / max(1, n["prunable_nonzero"]),
        "flops_dense": d["flops_dense"], "flops_effective": n["flops_dense"],
    }
    if not file_sizes:
        return report
    report.update({
        "size_dense_bytes": d["size_dense_bytes"],
        "size_sparse_raw_bytes": n["size_sparse_raw_bytes"],
        "size_ratio_raw": d["size_dense_bytes"] / max(1, n["size_sparse_raw_bytes"]),
        "size_dense_compressed_bytes": d["size_dense_compressed_bytes"],
        "size_sparse_bytes": n["size_sparse_bytes"],
        "size_ratio_compressed": d["size_dense_compressed_bytes"] / max(1, n["size_sparse_bytes"]),
    })
    return report
