"""Structured pruning through Torch-Pruning: whole filters and neurons removed, a narrower dense model.

Filter (channel) pruning removes output channels of convolutions and output neurons of hidden
linear layers, with everything that depends on them: the channels of the norm layers that
follow, the matching inputs of the next layers, and, through residual additions (ResNet18,
MobileNetV2's shortcuts) and depthwise convolutions (MobileNetV2), every layer coupled to them.
Those couplings are what Torch-Pruning's dependency graph finds for any architecture (Fang et
al., "DepGraph: Towards Any Structural Pruning", CVPR 2023; ``torch-pruning`` on PyPI), so one
code path prunes LeNet-5, VGG16, MobileNetV2 and ResNet18 alike. The output layer is never
pruned (its width is the number of classes).

Each coupled group loses the same share of its channels (``filter_ratio``; a group of ``n``
keeps ``int(n * (1 - ratio))``, and at least one), those whose group L1 norm is smallest
(Torch-Pruning's ``MagnitudeImportance(p=1)``: the L1 norm of every weight attached to the
channel, averaged over the group's layers; for a plain conv followed by BatchNorm this ranks
filters as Li et al. 2017 do, by their own L1 norm, up to the norm's and the next layer's
weights). :func:`filter_budget` finds the ratio whose narrow model keeps as many prunable
weights as unstructured pruning at the requested sparsity. The result is an ordinary dense
model, faster on any CPU (``benchmarks.structured_latency``) and smaller on disk.

A narrow model's shapes differ from the builder's, so they are recorded as
:func:`conv_channels` (the output width of every conv and hidden linear layer, in module order)
and :func:`with_channels` narrows a freshly built model to them before cached weights are
loaded. Torch-Pruning is imported only when a model is pruned or rebuilt, so the rest of the
package works without it.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from mcmia_helpers.defences.compression import compression_report, prunable_layers
from mcmia_helpers.defences.pruning.profiles import check_sparsity
from mcmia_helpers.errors import UserError

#: The structured choice of the ``prune`` defence: filter/channel pruning (see the module doc).
STRUCTURED = "filter"
#: What the cache entry of a filter-pruned model names as its method (part of its key).
STRUCTURED_METHOD = "torch-pruning-group-l1"


def _tp():
    """The ``torch_pruning`` module, or a one-line :class:`UserError` saying how to install it."""
    try:
        import torch_pruning
    except ImportError:
        raise UserError("--pruning filter needs Torch-Pruning: pip install 'torch-pruning>=1.6,<1.7' "
                        "(a dependency in pyproject.toml)") from None
    return torch_pruning


def _width_layers(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers whose output widths structured pruning changes: every prunable
    layer (:func:`~mcmia_helpers.defences.compression.prunable_layers`) but the output layer."""
    return list(prunable_layers(model).values())[:-1]


def _output_layer(model: nn.Module) -> nn.Module:
    return list(prunable_layers(model).values())[-1]


def conv_channels(model: nn.Module) -> list[int]:
    """The output width of every conv and hidden linear layer of ``model``, in module order:
    what fixes the shapes of a filter-pruned model (with the architecture it came from)."""
    return [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for m in _width_layers(model)]


def _example(model: nn.Module, input_shape: Sequence[int] | None) -> torch.Tensor:
    """One input that ``model`` accepts, for tracing: ``input_shape`` when given, else the first
    of 28, 32, 64 and 224 pixels square that runs (the first conv gives the channels)."""
    device = next(model.parameters()).device
    if input_shape is not None:
        return torch.zeros(1, *input_shape, device=device)
    channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    was_training = model.training
    model.eval()
    try:
        for side in (28, 32, 64, 224):
            x = torch.zeros(1, channels, side, side, device=device)
            try:
                with torch.no_grad():
                    model(x)
                return x
            except RuntimeError:
                continue
    finally:
        model.train(was_training)
    raise UserError(f"cannot find an input size that {type(model).__name__} accepts: give input_shape")


def _graph(model: nn.Module, x: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model`` (traced in eval mode: no norm statistics move)."""
    tp = _tp()
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(model, example_inputs=x)
    finally:
        model.train(was_training)


def _check_norms(model: nn.Module) -> None:
    """A one-line :class:`UserError` for a model with GroupNorm (the DP-compatible form):
    Torch-Pruning keeps a GroupNorm's group count, so it cannot narrow those layers freely."""
    if any(isinstance(m, nn.GroupNorm) for m in model.modules()):
        raise UserError("filter pruning needs the BatchNorm form of the model (GroupNorm keeps its "
                        "group count under Torch-Pruning): build it with dp_compatible=False")


def prune_filters(model: nn.Module, ratio: float,
                  input_shape: Sequence[int] | None = None) -> nn.Module:
    """A narrower copy of ``model``: ``ratio`` of every coupled channel group removed (smallest
    group L1 norm first), the output layer kept. ``model`` is left unchanged."""
    ratio = check_sparsity(ratio)
    _check_norms(model)
    tp = _tp()
    narrow = copy.deepcopy(model)
    x = _example(narrow, input_shape)
    was_training = narrow.training
    narrow.eval()
    # every layer keeps at least one channel: its ratio is capped below (w - 1) / w (Torch-Pruning
    # would otherwise leave a group it cannot shrink to int(w * (1 - ratio)) = 0 channels whole)
    caps = {layer: max(0.0, min(ratio, (w - 1) / w - 1e-9))
            for layer, w in zip(_width_layers(narrow), conv_channels(narrow))}
    with torch.enable_grad():  # the graph is traced through autograd
        pruner = tp.pruner.BasePruner(narrow, x, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, pruning_ratio_dict=caps,
                                      ignored_layers=[_output_layer(narrow)])
        pruner.step()
    narrow.train(was_training)
    return narrow


def filter_channels(model: nn.Module, ratio: float,
                    input_shape: Sequence[int] | None = None) -> list[int]:
    """The widths (:func:`conv_channels`) that :func:`prune_filters` leaves at ``ratio``."""
    return conv_channels(prune_filters(model, ratio, input_shape))


def _count(model: nn.Module) -> tuple[int, int]:
    """(prunable weights, all parameters) of ``model``."""
    return (sum(m.weight.numel() for m in prunable_layers(model).values()),
            sum(p.numel() for p in model.parameters()))


def filter_budget(model: nn.Module, sparsity: float, input_shape: Sequence[int] | None = None,
                  steps: int = 1024) -> dict[str, Any]:
    """The filter ratio that gives unstructured pruning's parameter budget at ``sparsity``.

    Unstructured pruning at sparsity ``s`` keeps ``(1 - s)`` of the prunable weights (conv and
    linear weights; biases and norms stay). Among the ratios ``i / steps`` this finds, by
    bisection on the narrow models Torch-Pruning actually builds (their kept prunable weight
    count falls as the ratio grows), the one whose count is closest to ``(1 - s)`` of the dense
    one (ties: the smaller ratio). Returns ``filter_ratio``, ``filter_channels``,
    ``prunable_dense``, ``prunable_kept``, ``param_share`` (kept / dense prunable weights),
    ``params_dense``, ``params_kept`` and ``param_share_total`` (all parameters).
    """
    sparsity = check_sparsity(sparsity)
    dense_prunable, dense_total = _count(model)
    target = (1.0 - sparsity) * dense_prunable
    seen: dict[int, tuple[int, int, list[int]]] = {}

    def at(i: int) -> tuple[int, int, list[int]]:
        if i not in seen:
            narrow = prune_filters(model, i / steps, input_shape) if i else model
            seen[i] = (*_count(narrow), conv_channels(narrow))
        return seen[i]

    low, high = 0, steps - 1  # at(low) >= target, unless even the largest ratio keeps more
    if at(high)[0] >= target:
        low = high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if at(mid)[0] >= target else (low, mid)
    best = min((i for i in (low, high)), key=lambda i: (abs(at(i)[0] - target), i))
    kept, total, widths = at(best)
    return {"filter_ratio": best / steps, "filter_channels": widths,
            "prunable_dense": dense_prunable, "prunable_kept": kept,
            "param_share": kept / dense_prunable, "params_dense": dense_total,
            "params_kept": total, "param_share_total": total / dense_total}


def _check_channels(model: nn.Module, channels: Any) -> list[int]:
    """``channels`` as one width per conv/hidden linear layer of ``model``, each in ``[1, dense]``."""
    dense = conv_channels(model)
    ok = (isinstance(channels, (list, tuple)) and len(channels) == len(dense)
          and all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= d
                  for c, d in zip(channels, dense)))
    if not ok:
        raise UserError(f"layer widths {list(channels) if isinstance(channels, (list, tuple)) else channels!r} "
                        f"do not fit this {type(model).__name__} (widths {dense}): give "
                        f"{len(dense)} integers, each between 1 and the dense width")
    return [int(c) for c in channels]


def with_channels(model: nn.Module, channels: Sequence[int],
                  input_shape: Sequence[int] | None = None) -> nn.Module:
    """A copy of ``model`` narrowed to the widths ``channels`` (:func:`conv_channels` of a
    filter-pruned model): each layer keeps its first channels, through the dependency graph
    (coupled layers narrow together). The architecture of a filter-pruned model, rebuilt so that
    its cached weights can be loaded into it (they replace every value)."""
    channels = _check_channels(model, channels)
    tp = _tp()
    narrow = copy.deepcopy(model)
    graph = _graph(narrow, _example(narrow, input_shape))
    for layer, width in zip(_width_layers(narrow), channels):
        current = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        if current > width:
            how = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
            graph.get_pruning_group(layer, how, idxs=list(range(width, current))).prune()
    if conv_channels(narrow) != channels:
        raise UserError(f"layer widths {channels} are not a structured pruning of this "
                        f"{type(model).__name__} (coupled layers give {conv_channels(narrow)})")
    return narrow


#: The name of :func:`with_channels` from when filter pruning was VGG16-only (callers still use it).
vgg_with_channels = with_channels


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
