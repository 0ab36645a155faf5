"""The ``prune`` defence's entry point: its parameters, its choices and ``train_pruned``."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from mcmia_helpers.context import TargetContext
from mcmia_helpers.defences.compression import compression_report, prunable_layers
from mcmia_helpers.defences.pruning.admm import ADMMSettings
from mcmia_helpers.defences.pruning.masks import compose_callbacks
from mcmia_helpers.defences.pruning.methods import _before_retrain, _tag, prune_model
from mcmia_helpers.defences.pruning.profiles import (Sparsity, check_sparsity, default_sparsity_profile,
                                                     global_threshold_targets, load_sparsity_spec,
                                                     resolve_sparsity)
from mcmia_helpers.defences.pruning.structured import (STRUCTURED, STRUCTURED_METHOD, filter_budget,
                                                       prune_filters, structured_report,
                                                       with_channels)
from mcmia_helpers.defences.registry import train_undefended
from mcmia_helpers.errors import UserError
from mcmia_helpers.training import TrainingCallback, evaluate, fit, load_or_train

#: Bump when a change to pruning makes cached pruned models wrong.
PRUNING_VERSION = 1

#: The ``pruning`` choices of the ``prune`` defence: an algorithm and how one overall sparsity
#: is spread over the layers (its *allocation*). Each algorithm's own allocation is its plain
#: name: ADMM uses ``default_sparsity_profile``, the magnitude methods one global threshold.
#: The swapped allocations are controls that separate the algorithm from the allocation (the
#: book's chapter 6): ``magnitude-profile`` prunes by magnitude to ADMM's per-layer targets,
#: ``admm-global`` runs ADMM to the per-layer sparsities a global magnitude threshold gives the
#: dense model. ``filter`` is structured pruning (``STRUCTURED``, any of the four
#: architectures, through Torch-Pruning): whole filters and neurons removed, the same share in
#: every coupled group of channels, at the ratio that keeps as many prunable
#: weights as unstructured pruning at that sparsity (``filter_budget``); the result is a
#: narrower dense model, faster on a CPU, where the unstructured choices only zero weights.
PRUNING_CHOICES: dict[str, tuple[str, str]] = {
    "admm": ("admm", "profile"),
    "magnitude": ("magnitude", "global"),
    "iterative": ("iterative", "global"),
    "admm-global": ("admm", "global"),
    "magnitude-profile": ("magnitude", "profile"),
    "iterative-profile": ("iterative", "profile"),
    "filter": ("filter", "uniform"),
}
#: The ``params`` a ``prune`` experiment accepts, with their defaults.
#: The architectures ``--pruning filter`` prunes (all four of the book).
FILTER_ARCHS: tuple[str, ...] = ("lenet5", "vgg16", "mobilenetv2", "resnet18")

PARAM_DEFAULTS: dict[str, Any] = {"pruning": "admm", "sparsity": 0.9, "sparsity_spec": None}


def validate_pruning_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``prune`` defence's ``params`` with defaults filled in, or a one-line :class:`UserError`.

    Keys: ``pruning`` (one of ``PRUNING_CHOICES``; default admm), ``sparsity`` (overall
    target in [0, 1), default 0.9) and ``sparsity_spec`` (a JSON/YAML per-layer file that,
    when given, replaces ``sparsity``; its layer names are checked against the model later).
    """
    unknown = sorted(set(params) - set(PARAM_DEFAULTS))
    if unknown:
        raise UserError(f"unknown pruning parameter(s) {unknown}: use {sorted(PARAM_DEFAULTS)}")
    out = {**PARAM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if out["pruning"] not in PRUNING_CHOICES:
        raise UserError(f"pruning method '{out['pruning']}' is unknown: choose "
                        f"{', '.join(PRUNING_CHOICES)}")
    out["sparsity"] = check_sparsity(out["sparsity"])
    if out["sparsity_spec"] is not None:
        if out["pruning"] == STRUCTURED:
            raise UserError("--pruning filter removes the same share of filters in every layer: "
                            "give one --sparsity, not a --sparsity-spec file")
        out["sparsity_spec"] = str(out["sparsity_spec"])
        load_sparsity_spec(out["sparsity_spec"])
    return out


def check_pruning_arch(params: Mapping[str, Any], arch: str) -> None:
    """A one-line :class:`UserError` when the pruning choice in ``params`` cannot prune ``arch``.

    The parameter validator does not see the architecture, so the callers that do check here
    before any training: :func:`train_pruned` (before the dense model) and the zoo's
    ``ZooSpec.validate``. Filter pruning prunes the four architectures of the book (through
    Torch-Pruning's dependency graph, :mod:`.structured`).
    """
    if params.get("pruning") == STRUCTURED and arch not in FILTER_ARCHS:
        raise UserError(f"--pruning filter prunes {', '.join(FILTER_ARCHS)} (got --arch {arch}): "
                        "use one of them, or an unstructured --pruning such as magnitude")


def train_pruned(ctx: TargetContext, *, params: Mapping[str, Any] | None = None,
                 dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None = None,
                 callback_extra: Callable[[], TrainingCallback] | None = None,
                 cache_extra: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The ``prune`` defence: prune the undefended target (``ctx.spec.params``) and report it.

    Combined defences reuse it (``prune+minmax``): ``params`` replaces ``ctx.spec.params``
    (pruning keys only), ``dense()`` gives the starting model and its info (default: the
    ``none`` defence's), a fresh ``callback_extra()`` joins the ADMM W-steps and the masked
    retraining (see ``prune_model``), and ``cache_extra`` extends the cache key.

    The dense model is the ``none`` defence's (same cache entry, trained once); the pruned
    model is cached under the full configuration. ``sparsity`` is the overall target on the
    prunable weights: ADMM spreads it with ``default_sparsity_profile``, the magnitude
    baselines with one global threshold; a ``sparsity_spec`` file fixes every layer instead.
    ``pruning: filter`` (LeNet-5, VGG16, MobileNetV2, ResNet18; any other architecture is a
    one-line error before any training) is structured pruning instead (see the module docstring): whole filters removed
    at ``filter_budget``'s ratio, the narrow model fine-tuned for ``admm_epochs +
    retrain_epochs``; its record has the same fields, counted against the dense model
    (``structured_report``), plus ``filter_ratio``, ``filter_channels``, ``params_dense``,
    ``params_kept``, ``param_share`` and ``param_share_total``.
    Extra record fields: the compression report (``sparsity_per_layer``,
    ``compression_ratio``, ``compression_ratio_prunable``, the raw and compressed file sizes
    and their ratios, ``flops_dense``, ``flops_effective``) plus ``pruning``,
    ``sparsity``, ``sparsity_targets``, ``sparsity_achieved``, ``train_acc_before_retrain``,
    the epochs and ``history`` (ADMM, hard-prune and retraining rows, each with its ``phase``).
    """
    params = validate_pruning_params(ctx.spec.params if params is None else params)
    choice = params["pruning"]
    check_pruning_arch(params, ctx.spec.arch)
    if choice == STRUCTURED:
        return _train_filter_pruned(ctx, params, dense, callback_extra, cache_extra)
    method, allocation = PRUNING_CHOICES[choice]
    dense_model, dense_info = _dense_start(ctx, dense)
    probe = ctx.build()
    if params["sparsity_spec"] is not None:
        sparsity: Sparsity = resolve_sparsity(probe, params["sparsity_spec"])
    elif allocation == "profile":
        sparsity = default_sparsity_profile(probe, params["sparsity"])
    elif method == "admm":  # ADMM needs per-layer targets: those of one global threshold
        sparsity = global_threshold_targets(dense_model, params["sparsity"])
    else:
        sparsity = params["sparsity"]  # one global threshold, inside prune_model
    targets = resolve_sparsity(probe, sparsity)
    sizes = {name: m.weight.numel() for name, m in prunable_layers(probe).items()}
    overall = (params["sparsity"] if params["sparsity_spec"] is None else
               sum(sizes[n] * s for n, s in targets.items()) / sum(sizes.values()))
    epochs = max(1, ctx.train_config.epochs // 2)
    settings = ADMMSettings()
    normalised = replace(ctx, spec=replace(ctx.spec, params=params))  # same key, however spelled
    key_targets = sparsity if isinstance(sparsity, dict) else {"global": sparsity}
    config = normalised.cache_config(pruning=method if choice == method else choice,
                                     sparsity_targets=key_targets,
                                     admm_epochs=epochs, retrain_epochs=epochs,
                                     admm=settings.to_dict(), iterative_rounds=3,
                                     pruning_version=PRUNING_VERSION, **(cache_extra or {}))
    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        _, _, info = prune_model(model, ctx.bundle, ctx.split.members, ctx.train_config, method,
                                 sparsity, admm_epochs=epochs, retrain_epochs=epochs,
                                 callback_extra=callback_extra() if callback_extra else None,
                                 device=ctx.device, progress=ctx.progress, admm=settings,
                                 checkpoint_path=checkpoint)
        return info["history"]

    model, cache_info = load_or_train(config, lambda: copy.deepcopy(dense_model), train)
    report = compression_report(model, (ctx.bundle.in_channels, ctx.bundle.image_size,
                                        ctx.bundle.image_size), file_sizes=not ctx.is_shadow)
    extra = {key: report[key] for key in (
        "sparsity_per_layer", "compression_ratio", "compression_ratio_prunable",
        "size_dense_bytes", "size_sparse_raw_bytes", "size_ratio_raw",
        "size_dense_compressed_bytes", "size_sparse_bytes", "size_ratio_compressed",
        "flops_dense", "flops_effective") if key in report}
    extra.update({
        "pruning": choice, "pruning_algorithm": method,
        "sparsity_allocation": "file" if params["sparsity_spec"] is not None else allocation,
        "sparsity": overall, "sparsity_spec": params["sparsity_spec"],
        "sparsity_targets": key_targets,
        "sparsity_achieved": report["sparsity"],
        "admm_epochs": epochs if method == "admm" else 0,
        "retrain_epochs": epochs if method == "admm" else 2 * epochs,
        "train_acc_before_retrain": _before_retrain(cache_info["history"]),
        "dense_cached": dense_info.get("cached"), "cached": cache_info["cached"],
        "history": cache_info["history"],
    })
    return model, extra


def _dense_start(ctx: TargetContext, dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None
                 ) -> tuple[nn.Module, dict[str, Any]]:
    """The model pruning starts from and its info: ``dense()``, else the ``none`` defence's
    target (its own cache entry, trained once)."""
    if dense is not None:
        return dense()
    return train_undefended(replace(ctx, spec=replace(ctx.spec, defense="none", params={})))


def _train_filter_pruned(ctx: TargetContext, params: Mapping[str, Any],
                         dense: Callable[[], tuple[nn.Module, dict[str, Any]]] | None,
                         callback_extra: Callable[[], TrainingCallback] | None,
                         cache_extra: Mapping[str, Any] | None) -> tuple[nn.Module, dict[str, Any]]:
    """``pruning: filter`` of :func:`train_pruned`: structured pruning of the dense target.

    The filter ratio is ``filter_budget``'s for ``params["sparsity"]`` (the narrow model
    keeps about as many prunable weights as unstructured pruning at that sparsity); the
    narrow model (:func:`~.structured.prune_filters` of the dense target) is fine-tuned on the members
    for ``admm_epochs + retrain_epochs`` (``2 * max(1, epochs // 2)``), the budget every
    pruning method gets after the dense model, with ``callback_extra`` (the Min-Max game) if
    given. The cache key names the method (:data:`~.structured.STRUCTURED_METHOD`) and the kept
    width of every conv and hidden linear layer (``filter_channels``, also stored in the entry's
    configuration), from which :func:`~.structured.with_channels` builds the
    narrow form before the cached weights are loaded (digest-checked and strict, as every
    cached model). Record fields: those of ``structured_report`` plus ``filter_ratio``,
    ``filter_channels`` and the fields every pruning record has.
    """
    probe = ctx.build()
    shape = (ctx.bundle.in_channels, ctx.bundle.image_size, ctx.bundle.image_size)
    budget = filter_budget(probe, params["sparsity"], shape)
    ratio, channels = budget["filter_ratio"], budget["filter_channels"]
    dense_model, dense_info = _dense_start(ctx, dense)
    epochs = 2 * max(1, ctx.train_config.epochs // 2)
    normalised = replace(ctx, spec=replace(ctx.spec, params=dict(params)))
    config = normalised.cache_config(pruning=STRUCTURED, filter_method=STRUCTURED_METHOD,
                                     filter_ratio=ratio,
                                     filter_channels=channels, retrain_epochs=epochs,
                                     pruning_version=PRUNING_VERSION, **(cache_extra or {}))

    def train(model: nn.Module, checkpoint: Path) -> list[dict]:
        model.load_state_dict(prune_filters(dense_model, ratio, shape).state_dict())
        model.to(ctx.device)
        pruned = {"epoch": 0, **evaluate(model, ctx.bundle, ctx.split.members, device=ctx.device),
                  "phase": "hard_prune"}
        rows = fit(model, ctx.bundle, ctx.split.members, replace(ctx.train_config, epochs=epochs),
                   device=ctx.device, progress=ctx.progress, checkpoint_path=checkpoint,
                   callback=compose_callbacks(callback_extra() if callback_extra else None))
        return [pruned] + _tag(rows, phase="finetune")

    model, cache_info = load_or_train(config, lambda: with_channels(probe, channels, shape), train)
    model.to(ctx.device)
    extra = structured_report(dense_model, model, shape, file_sizes=not ctx.is_shadow)
    extra.update({
        "pruning": STRUCTURED, "pruning_algorithm": STRUCTURED, "sparsity_allocation": "uniform",
        "sparsity": params["sparsity"], "sparsity_spec": None,
        "sparsity_targets": {"global": params["sparsity"]},
        "filter_ratio": ratio, "filter_channels": channels, "filter_method": STRUCTURED_METHOD,
        "admm_epochs": 0, "retrain_epochs": epochs,
        "train_acc_before_retrain": _before_retrain(cache_info["history"]),
        "dense_cached": dense_info.get("cached"), "cached": cache_info["cached"],
        "history": cache_info["history"],
    })
    return model, extra
