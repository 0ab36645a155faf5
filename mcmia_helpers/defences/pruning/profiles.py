"""Sparsity targets: how one overall sparsity (or a spec file) becomes per-layer targets.

Checked numbers, JSON/YAML spec files, the Erdos-Renyi-kernel profile ADMM prunes to
(:func:`default_sparsity_profile`) and the per-layer sparsities of one global magnitude
threshold (:func:`global_threshold_targets`).
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Union

from torch import nn

from mcmia_helpers.defences.compression import effective_weight, prunable_layers
from mcmia_helpers.defences.pruning.magnitude import magnitude_masks
from mcmia_helpers.errors import UserError

Sparsity = Union[float, Mapping[str, float], str, os.PathLike]


def check_sparsity(value: Any, layer: str | None = None) -> float:
    """``value`` as a float in [0, 1), or a one-line :class:`UserError`."""
    where = f" for layer '{layer}'" if layer else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"sparsity {value!r}{where} is not a number: use e.g. 0.9")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UserError(f"sparsity {value:g}{where} is outside [0, 1): use e.g. 0.9")
    return value


def load_sparsity_spec(path: str | os.PathLike) -> dict[str, float]:
    """A per-layer sparsity spec from a JSON or YAML file: ``{layer_name: sparsity}``.

    Layer names are module names as in ``model.named_modules()`` (``features.0``); a trailing
    ``.weight`` is accepted. The key ``default`` sets the sparsity of layers not listed (else 0).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"sparsity spec {path} does not exist: give a JSON or YAML file "
                        "mapping layer names to sparsities")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"sparsity spec {path} is not UTF-8 text (byte {exc.start}): write a JSON "
                        "or YAML mapping such as {\"features.0\": 0.5, \"default\": 0.9}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot parse sparsity spec {path} ({first}): write a JSON or YAML "
                        "mapping such as {\"features.0\": 0.5, \"default\": 0.9}") from None
    if not isinstance(data, Mapping) or not data:
        raise UserError(f"sparsity spec {path} is not a mapping of layer names to sparsities: "
                        "write e.g. {\"features.0\": 0.5, \"default\": 0.9}")
    return {str(name): check_sparsity(value, str(name)) for name, value in data.items()}


def _layer_list(names) -> str:
    names = list(names)
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def resolve_sparsity(model: nn.Module, sparsity: Sparsity) -> dict[str, float]:
    """Per-layer sparsity targets ``{layer_name: s}`` for every prunable layer of ``model``.

    ``sparsity`` is one number (the same for every layer), a mapping ``{layer_name: s}``
    (unlisted layers get the mapping's ``default``, else 0), or the path of a JSON/YAML spec
    file holding such a mapping. An unknown layer name is a :class:`UserError` naming it.
    """
    layers = prunable_layers(model)
    if isinstance(sparsity, (str, os.PathLike)):
        sparsity = load_sparsity_spec(sparsity)
    if isinstance(sparsity, Mapping):
        given = {str(k).removesuffix(".weight"): v for k, v in sparsity.items()}
        default = check_sparsity(given.pop("default", 0.0), "default")
        for name in given:
            if name not in layers:
                raise UserError(f"sparsity spec names unknown layer '{name}': prunable layers "
                                f"are {_layer_list(layers)}")
        return {name: check_sparsity(given.get(name, default), name) for name in layers}
    value = check_sparsity(sparsity)
    return {name: value for name in layers}


def default_sparsity_profile(model: nn.Module, target: float,
                             conv_factor: float = 2.0) -> dict[str, float]:
    """Per-layer sparsities that prune ``target`` of all prunable weights, small layers less.

    Each layer keeps a density proportional to its Erdos-Renyi-kernel score (Evci et al.
    2020, "Rigging the Lottery"): ``sum(shape) / prod(shape)`` of its weight, which is large
    for small layers (the first convolution, the output layer) and small for the big ones
    that hold most of the weights; convolutions get ``conv_factor`` times more (they share
    each weight across all positions, so every pruned conv weight costs more accuracy than a
    fully-connected one). Densities are capped at 1 and the common scale is found by
    bisection so that the weighted sparsity equals ``target``. On LeNet-5 at 90% this gives
    about 0% / 82% for the two convolutions and 93% / 86% / 25% for the three linear layers,
    close to the per-layer ratios of Deep Compression (Han et al. 2015) for LeNet-5.
    """
    target = check_sparsity(target)
    layers = prunable_layers(model)
    if not layers:
        raise UserError("this model has no conv or linear layer to prune")
    sizes, scores = {}, {}
    for name, module in layers.items():
        shape = module.weight.shape
        sizes[name] = module.weight.numel()
        scores[name] = sum(shape) / sizes[name] * (conv_factor if isinstance(module, nn.Conv2d) else 1.0)
    total, keep = sum(sizes.values()), (1.0 - target) * sum(sizes.values())

    def kept(scale: float) -> float:
        return sum(n * min(1.0, scale * scores[k]) for k, n in sizes.items())

    low, high = 0.0, 1.0 / min(scores.values())
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) < keep else (low, mid)
    scale = (low + high) / 2
    profile = {k: max(0.0, 1.0 - min(1.0, scale * scores[k])) for k in sizes}
    assert abs(sum(sizes[k] * profile[k] for k in sizes) / total - target) < 1e-6
    return profile


def global_threshold_targets(model: nn.Module, sparsity: float) -> dict[str, float]:
    """The per-layer sparsities that one global magnitude threshold gives ``model``.

    The threshold keeps the ``1 - sparsity`` largest-magnitude weights over all prunable layers
    together (as ``magnitude`` pruning does); each layer's target is the share of its own
    weights below it. ADMM run to these targets (``admm-global``) has magnitude pruning's
    allocation, so the two algorithms can be compared at one allocation.
    """
    sparsity = check_sparsity(sparsity)
    layers = prunable_layers(model)
    weights = {name: effective_weight(m).detach().cpu().unsqueeze(0) for name, m in layers.items()}
    masks = magnitude_masks(weights, sparsity)
    return {name: float((~mask).sum()) / mask.numel() for name, mask in masks.items()}
