"""One zoo experiment = one zoo (and the dense zoo where an attack needs it), its leave-one-out
attacks, and one JSON record; what ``python -m mcmia_helpers zoo`` runs.

See :mod:`mcmia_helpers.zoo.membership` (who trains on what; canaries after Aerni, Zhang and
Tramèr, CCS 2024), :mod:`mcmia_helpers.zoo.train` (cached, resumable, batched training) and
:mod:`mcmia_helpers.zoo.evaluate` (leave-one-out LiRA after Carlini et al. 2022, pooled and
per-target metrics, bootstrap over targets, paired differences).

For a cluster, the models can be trained elsewhere first: :func:`train_zoo_range` is one task
(``zoo --train-only --model-range A:B``), :func:`train_command` and :func:`task_ranges` print the
tasks (``zoo --print-commands``), and ``run_zoo(..., require_cached=True)`` attacks without
training, naming the command for any model still missing (:func:`missing_message`).
"""

from __future__ import annotations

import io
import os
import shlex
import time
from typing import Any, Iterable

import numpy as np
import torch

from mcmia_helpers.errors import UserError
from mcmia_helpers.io import atomic_write, check_writable_dir
from mcmia_helpers.metrics import mean_interval
from mcmia_helpers.training import cache_dir
from mcmia_helpers.version import __version__
from mcmia_helpers.zoo.epsilon import zoo_epsilon_bound
from mcmia_helpers.zoo.evaluate import (ZooScores, attack_zoo, base_attack, example_exposure,
                                        paired_difference, zoo_attack_names, zoo_metrics)
from mcmia_helpers.zoo.membership import membership_summary
from mcmia_helpers.zoo.train import (Zoo, ZooModelsMissing, ZooSetup, ZooSpec,
                                     describe_indices, missing_models, prepare_zoo, train_zoo,
                                     train_zoo_models)

SUBSETS = ("all", "ordinary", "canaries")


def check_zoo_request(spec: ZooSpec, attacks: str | Iterable[str]) -> tuple[str, ...]:
    """Every check that needs no data: the spec and the attack names (one-line UserError)."""
    spec.validate()
    names = zoo_attack_names(attacks)
    check_writable_dir(cache_dir(), "the model cache (MCMIA_CACHE)")
    return names


def _utility(zoo: Zoo) -> dict[str, Any]:
    test, member = zoo.test_acc, zoo.member_acc()
    return {"test_acc": test, "member_acc": member, "test_acc_mean": float(np.mean(test)),
            "member_acc_mean": float(np.mean(member)),
            "test_acc_mean_ci95": list(mean_interval(test, bounds=(0.0, 1.0))[1:])}


def run_zoo(spec: ZooSpec, attacks: str | Iterable[str] = "lira_online,lira_offline,loss", *,
            save_scores: str | os.PathLike | None = None, progress: bool = False,
            n_bootstrap: int = 200, group_size: int = 16,
            setup: ZooSetup | None = None, require_cached: bool = False) -> dict[str, Any]:
    """Train (or load) the zoo of ``spec`` and, where an attack needs it, the dense zoo; run
    ``attacks`` leave-one-out (names ending in ``_aware`` take their shadow models from the
    defended zoo, the others from the dense zoo); return the record.

    ``save_scores`` writes an ``.npz`` (atomically) with ``pool_indices``, ``membership``
    ``(N, P)``, ``labels``, ``canary``, ``test_acc`` and per attack ``score_<attack>`` ``(N, P)``,
    ``threshold_<attack>`` ``(N,)`` and the per-example exposure ``exposure_auc_<attack>`` and
    ``exposure_flagged_in_<attack>`` (see :func:`~mcmia_helpers.zoo.evaluate.example_exposure`).

    With ``require_cached`` nothing is trained: a model missing from the cache (of the zoo or
    of its dense zoo) is a one-line :class:`UserError` naming the missing models and the
    ``--train-only`` command that trains them (:func:`missing_message`).
    """
    started = time.perf_counter()
    names = check_zoo_request(spec, attacks)
    setup = setup or prepare_zoo(spec, progress=progress)
    params = spec.normalised_params()
    n = spec.models()
    if require_cached:
        _check_cached(spec, setup, group_size)
    try:
        zoo = train_zoo(setup, spec.defense, params, n, group_size=group_size, progress=progress,
                        require_cached=require_cached)
        dense = zoo
        if spec.defense != "none":
            dense = train_zoo(setup, "none", {}, n, group_size=group_size, progress=progress,
                              require_cached=require_cached)
    except ZooModelsMissing as exc:  # an entry found damaged on reading, and set aside
        raise UserError(missing_message(spec, exc.indices, group_size)) from None
    results: dict[str, Any] = {}
    scores: dict[str, ZooScores] = {}
    for name in names:
        _, aware = base_attack(name)
        zs = attack_zoo(name, zoo, zoo if aware else dense)
        scores[name] = zs
        entry: dict[str, Any] = {"shadow_zoo": zs.shadow_zoo, "note": zs.note,
                                 "shadow_models": [[j for _, j in used] for used in zs.shadows]}
        for subset in SUBSETS:
            entry[subset] = zoo_metrics(zs, subset, n_bootstrap=n_bootstrap, seed=spec.seed)
        results[name] = entry
    paired: dict[str, Any] = {}
    if spec.defense != "none":
        for name in names:
            base, aware = base_attack(name)
            reference = attack_zoo(base, dense, dense)
            paired[name] = {subset: paired_difference(scores[name], reference, subset,
                                                      n_bootstrap=n_bootstrap, seed=spec.seed)
                            for subset in ("all", "canaries")}
    bundle = setup.ctx.bundle
    counts = membership_summary(zoo.membership)
    record: dict[str, Any] = {
        "kind": "zoo",
        "arch": spec.arch,
        "dataset_requested": spec.dataset,
        "dataset_used": bundle.name_used,
        "dataset_standin": bundle.is_standin,
        "dataset_view": bundle.view,
        "dataset_description": bundle.describe(),
        "scale": spec.scale,
        "defense": spec.defense,
        "params": params,
        "models": n,
        "pool": setup.zoo_pool.size,
        "canaries": int(setup.zoo_pool.canary.sum()),
        "members_per_model": counts["members_per_model"],
        "models_per_example": counts["models_per_example"],
        "pooled_members": counts["pooled_members"],
        "pooled_nonmembers": counts["pooled_nonmembers"],
        "seed": spec.seed,
        "seeds": zoo.seeds,
        "width": setup.ctx.arch_scale.width,
        "train_config": setup.ctx.train_config.to_dict(),
        "test_size": int(setup.zoo_pool.test.numel()),
        "reference_size": int(setup.zoo_pool.reference.numel()),
        "zoo_identity": setup.zoo_pool.identity(),
        "utility": _utility(zoo),
        "dense_utility": _utility(dense) if dense is not zoo else None,
        "model_extras": zoo.extras,
        "attacks": results,
        "paired_vs_dense": paired or None,
        "epsilon_lower_bound": _epsilon_bounds(spec.defense, zoo, scores),
        "training": {"zoo": zoo.info, "dense": dense.info if dense is not zoo else None},
        "package_version": __version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if save_scores is not None:
        save_zoo_scores(save_scores, setup, zoo, scores)
    record["wall_time_s"] = round(time.perf_counter() - started, 3)
    return record


def _epsilon_bounds(defense: str, zoo: Zoo, scores: dict[str, ZooScores]) -> dict | None:
    """Per attack, the epsilon lower bound its scores of the canaries support
    (:func:`~mcmia_helpers.zoo.epsilon.zoo_epsilon_bound`); ``None`` without canaries."""
    if not bool(zoo.canary.any()):
        return None
    return {name: zoo_epsilon_bound(zs.scores, zs.membership, zs.canary, defense=defense,
                                    extras=zoo.extras) for name, zs in scores.items()}


def save_zoo_scores(path: str | os.PathLike, setup: ZooSetup, zoo: Zoo,
                    scores: dict[str, ZooScores]) -> None:
    """The ``--save-scores`` file (see :func:`run_zoo`), written atomically."""
    arrays: dict[str, np.ndarray] = {
        "pool_indices": setup.zoo_pool.pool.numpy(), "membership": zoo.membership.numpy(),
        "labels": zoo.labels.numpy(), "canary": zoo.canary.numpy(),
        "test_acc": np.asarray(zoo.test_acc), "seeds": np.asarray(zoo.seeds),
        "attacks": np.array(list(scores), dtype=str)}
    for name, zs in scores.items():
        arrays[f"score_{name}"] = zs.scores
        arrays[f"threshold_{name}"] = zs.thresholds
        exposure = example_exposure(zs)
        arrays[f"exposure_auc_{name}"] = exposure["auc"]
        arrays[f"exposure_flagged_in_{name}"] = exposure["flagged_in"]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
    except OSError as exc:  # pragma: no cover - atomic_write turns these into UserError
        raise UserError(f"cannot write {path}: {exc}") from None


# --------------------------------------------------------------------------- a zoo over a cluster


def train_zoo_range(spec: ZooSpec, start: int | None = None, stop: int | None = None, *,
                    group_size: int = 16, progress: bool = False,
                    setup: ZooSetup | None = None) -> dict[str, Any]:
    """``zoo --train-only --model-range A:B``: put models ``start .. stop - 1`` (default: all)
    of ``spec``'s zoo into the cache, and for a defended zoo those of its dense zoo too (the
    attack run needs both; the dense ones first, where the defence starts from them), writing
    nothing else. Returns what was found and trained, per zoo."""
    spec.validate()
    check_writable_dir(cache_dir(), "the model cache (MCMIA_CACHE)")
    n = spec.models()
    start, stop = (0 if start is None else int(start)), (n if stop is None else int(stop))
    if not 0 <= start < stop <= n:
        raise UserError(f"--model-range {start}:{stop} is not within the zoo's {n} models: use "
                        f"A:B with 0 <= A < B <= {n}")
    setup = setup or prepare_zoo(spec, progress=progress)
    indices = list(range(start, stop))
    out: dict[str, Any] = {"models": [start, stop]}
    if spec.defense != "none":
        out["dense"] = train_zoo_models(setup, "none", {}, indices, group_size=group_size,
                                        progress=progress)
    out["zoo"] = train_zoo_models(setup, spec.defense, spec.normalised_params(), indices,
                                  group_size=group_size, progress=progress)
    return out


def zoo_command(spec: ZooSpec, *, group_size: int = 16, extra: Iterable[str] = ()) -> str:
    """The ``python -m mcmia_helpers zoo`` command line of ``spec``'s zoo (every size resolved,
    so the line means the same zoo whatever ``MCMIA_SCALE`` says), followed by ``extra``."""
    args = ["python", "-m", "mcmia_helpers", "zoo", "--arch", spec.arch, "--dataset", spec.dataset,
            "--scale", spec.scale, "--models", str(spec.models()), "--pool", str(spec.pool_size()),
            "--canaries", str(spec.n_canaries()), "--defense", spec.defense, "--seed", str(spec.seed)]
    if spec.standin:
        args += ["--standin", spec.standin]
    for key, value in sorted(spec.params.items()):
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    if group_size != 16:
        args += ["--group-size", str(group_size)]
    return shlex.join(args + list(extra))


def train_command(spec: ZooSpec, start: int, stop: int, *, group_size: int = 16) -> str:
    """The command that trains models ``start .. stop - 1`` of ``spec``'s zoo into the cache."""
    return zoo_command(spec, group_size=group_size,
                       extra=["--train-only", "--model-range", f"{start}:{stop}"])


def task_ranges(n_models: int, per_task: int, todo: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """The ranges ``[k * per_task, (k + 1) * per_task)`` (the last one cut at ``n_models``) that
    hold at least one model of ``todo`` (default: every model)."""
    if per_task < 1:
        raise UserError(f"--per-task {per_task} is not a positive number of models: use e.g. --per-task 16")
    wanted = set(range(n_models) if todo is None else todo)
    return [(a, min(a + per_task, n_models)) for a in range(0, n_models, per_task)
            if wanted & set(range(a, min(a + per_task, n_models)))]


def zoo_to_train(spec: ZooSpec, setup: ZooSetup) -> list[int]:
    """The models of ``spec``'s zoo not yet in the cache, with those of its dense zoo for a
    defended zoo (what :func:`train_zoo_range` would train)."""
    n = spec.models()
    todo = set(missing_models(setup, spec.defense, spec.normalised_params(), n))
    if spec.defense != "none":
        todo |= set(missing_models(setup, "none", {}, n))
    return sorted(todo)


def missing_message(spec: ZooSpec, missing: Iterable[int], group_size: int = 16) -> str:
    """One line: which models are not cached and the command that trains them."""
    missing = sorted(missing)
    which = "zoo" if spec.defense == "none" else f"{spec.defense} zoo (or its dense zoo)"
    return (f"{describe_indices(missing)} of the {which} are not in the model cache "
            f"({cache_dir()}): train them with `{train_command(spec, missing[0], missing[-1] + 1, group_size=group_size)}` "
            "(or print one command per cluster task with --print-commands), or drop "
            "--require-cached to train them here")


def _check_cached(spec: ZooSpec, setup: ZooSetup, group_size: int) -> None:
    todo = zoo_to_train(spec, setup)
    if todo:
        raise UserError(missing_message(spec, todo, group_size))
