"""Calibration that matches the target (issue 17): the shadow models that calibrate the metric
attacks' thresholds and train the shadow attack networks are trained with the target's defence
(``calibration="target"``, the default) or without it (``"undefended"``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mcmia_helpers import context, experiments
from mcmia_helpers import grid as grid_runner
from mcmia_helpers.attacks import runner
from mcmia_helpers.attacks.scores import calibrate_threshold, loss_score
from mcmia_helpers.attacks.shadows import shadow_model_specs
from mcmia_helpers.cli import build_parser, main
from mcmia_helpers.context import ExperimentSpec, prepare
from mcmia_helpers.defences import DEFENSES
from mcmia_helpers.defences.pruning import prunable_layers
from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import ArchScale, Scale
from mcmia_helpers.shadow import predict_logits_many

#: LeNet-5 on the bundled digits, 64 members, 4 epochs, 2 shadow models: seconds per model.
TINY = Scale("ci", {"lenet5": ArchScale(n_members=64, epochs=4, width=0.5, batch_size=16,
                                        n_shadow_models=2, n_lira_models=2)})
PRUNE = {"pruning": "magnitude", "sparsity": 0.8}
NAMES = ["loss", "shadow_top3"]


@pytest.fixture(scope="module")
def tiny_scale():
    """Every context of this module is prepared at :data:`TINY` (the session cache is shared)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context, "get_scale", lambda name=None: TINY)
        yield


def _spec(defense: str = "prune", calibration: str | None = None) -> ExperimentSpec:
    spec = ExperimentSpec(arch="lenet5", dataset="digits", defense=defense, seed=5,
                          params=dict(PRUNE) if defense == "prune" else {},
                          attacks=("loss",), calibration=calibration)
    return experiments.validate_spec(spec)


def _sparsity(model: torch.nn.Module) -> float:
    weights = [m.weight for m in prunable_layers(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def _scores_and_calibration_models(defense: str, calibration: str):
    """The target's scores under ``calibration``, and the shadow models the runner used for
    calibration (caught on their way out of the defence trainer or the batched engine)."""
    ctx = prepare(_spec(defense, calibration))
    model, _ = DEFENSES[defense](ctx)
    seen: dict[str, list] = {"defended": [], "batched": []}
    real_aware, real_batched = runner.defence_aware_models, runner.load_or_train_models

    def aware(c, specs):
        models = real_aware(c, specs)
        seen["defended"].append(models)
        return models

    def batched(*args, **kwargs):
        models, info = real_batched(*args, **kwargs)
        seen["batched"].append(models)
        return models, info

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "defence_aware_models", aware)
        patch.setattr(runner, "load_or_train_models", batched)
        scores = runner.compute_attack_scores(ctx, model, NAMES)
    return ctx, scores, seen


@pytest.fixture(scope="module")
def runs(tiny_scale):
    """``{(defense, calibration): (ctx, scores, seen)}`` for a pruned and an undefended target."""
    return {(d, c): _scores_and_calibration_models(d, c)
            for d in ("prune", "none") for c in ("target", "undefended")}


def _loss_threshold_of(ctx, models) -> float:
    """The loss threshold calibrated on ``models``, recomputed here from their pool logits."""
    _, in_mask = shadow_model_specs(ctx)
    pool = ctx.split.shadow_pool
    logits = predict_logits_many(models, ctx.bundle, pool, device=ctx.device).flatten(0, 1)
    labels = ctx.bundle.labels[pool].repeat(len(models))
    return calibrate_threshold(loss_score(logits, labels), in_mask.flatten().long().numpy())


def test_target_calibration_trains_pruned_shadow_models(runs) -> None:
    ctx, scores, seen = runs["prune", "target"]
    assert seen["batched"] == [[]]  # no plain shadow model
    [models] = seen["defended"]
    assert len(models) == TINY.for_arch("lenet5").n_shadow_models
    for model in models:
        assert _sparsity(model) == pytest.approx(0.8, abs=0.01)
    assert scores.thresholds["loss"] == _loss_threshold_of(ctx, models)
    assert scores.notes["loss"] == ("threshold calibrated on 2 shadow models trained with the "
                                    "target's defence (prune, pruning=magnitude, sparsity=0.8)")
    assert scores.notes["shadow_top3"].startswith("attack network trained on 2 shadow models "
                                                  "trained with the target's defence (prune")


def test_undefended_calibration_keeps_dense_shadow_models(runs) -> None:
    ctx, scores, seen = runs["prune", "undefended"]
    assert seen["defended"] == []
    [models] = seen["batched"]
    for model in models:
        assert _sparsity(model) < 0.01
    assert scores.thresholds["loss"] == _loss_threshold_of(ctx, models)
    assert "without the target's defence (prune, pruning=magnitude" in scores.notes["loss"]


def test_thresholds_differ_only_for_a_defended_target(runs) -> None:
    target, undefended = runs["prune", "target"][1], runs["prune", "undefended"][1]
    np.testing.assert_array_equal(target.scores["loss"], undefended.scores["loss"])  # same target
    assert target.thresholds["loss"] != undefended.thresholds["loss"]
    assert not np.allclose(target.scores["shadow_top3"], undefended.scores["shadow_top3"])

    plain_target, plain_undefended = runs["none", "target"], runs["none", "undefended"]
    assert plain_target[2]["defended"] == plain_undefended[2]["defended"] == []
    assert plain_target[1].thresholds == plain_undefended[1].thresholds
    np.testing.assert_array_equal(plain_target[1].scores["shadow_top3"],
                                  plain_undefended[1].scores["shadow_top3"])
    assert plain_target[1].notes["loss"].endswith("trained like the target (no defence)")


def test_record_states_the_calibration(tiny_scale) -> None:
    default = experiments.run_experiment(_spec("prune"))
    assert default["calibration"] == "target" and "calibration" not in default["identity"]
    loss = default["attacks"]["loss"]
    assert "trained with the target's defence (prune, pruning=magnitude, sparsity=0.8)" in loss["note"]
    assert loss["threshold_kind"] == "calibrated"
    assert loss["accuracy_oracle"] == pytest.approx(0.5 + loss["advantage"] / 2)
    assert loss["accuracy_oracle"] >= loss["accuracy"] - 1e-12  # the best threshold on the labels

    chosen = experiments.run_experiment(_spec("prune", "undefended"))
    assert chosen["calibration"] == "undefended" and chosen["identity"] == {"calibration": "undefended"}
    assert "undefended calibration" in chosen["attacks"]["loss"]["note"]
    assert chosen["attacks"]["loss"]["threshold"] != loss["threshold"]
    assert grid_runner.record_cell_id(chosen) == grid_runner.cell_id(_spec("prune", "undefended"))
    assert experiments.run_experiment(_spec("none"))["calibration"] == "target"


def test_bad_calibration_is_one_line_before_any_training(tmp_path, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["run", "--arch", "lenet5", "--dataset", "digits", "--calibration", "bogus"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and "--calibration" in lines[0], lines
    assert "target" in lines[0] and "undefended" in lines[0]

    with pytest.raises(UserError, match="unknown calibration 'bogus': choose one of target, undefended"):
        experiments.validate_spec(ExperimentSpec("lenet5", "digits", calibration="bogus"))
    monkeypatch.setattr(runner, "load_or_train_models", lambda *a, **k: pytest.fail("trained"))
    ctx = prepare(ExperimentSpec("lenet5", "digits", scale="ci"))
    with pytest.raises(UserError, match="unknown calibration"):
        runner.compute_attack_scores(replace(ctx, spec=replace(ctx.spec, calibration="Target")),
                                     ctx.build(), ["loss"])

    config = tmp_path / "grid.yaml"
    config.write_text("scale: ci\ncells:\n  - arch: lenet5\n    dataset: digits\n"
                      "    calibration: bogus\n")
    with pytest.raises(UserError) as bad_grid:
        grid_runner.load_grid(config)
    message = str(bad_grid.value)
    assert "\n" not in message and "line 5" in message and "calibration" in message, message
    assert "'target'" in message and "'undefended'" in message


def test_explicit_calibration_is_part_of_the_cell_id() -> None:
    base = ExperimentSpec("lenet5", "mnist", defense="prune", params={"sparsity": 0.9})
    assert grid_runner.cell_id(base) == "lenet5/mnist/ci/prune/pruning=admm/sparsity=0.9/seed=0"
    ids = {grid_runner.cell_id(replace(base, calibration=c)) for c in (None, "target", "undefended")}
    assert len(ids) == 3
    assert experiments.spec_identity(base) == {}
    assert experiments.spec_identity(replace(base, calibration="target")) == {"calibration": "target"}
    # The stored book records count as cells of the book grid (test_book_outputs checks that
    # every cell has one).
    stored = Path(__file__).resolve().parents[1] / "results" / "book.jsonl"
    book = {grid_runner.cell_id(s) for s in grid_runner.expand(grid_runner.load_grid("book"))}
    records = [json.loads(line) for line in stored.read_text().splitlines()]
    assert records and {grid_runner.record_cell_id(r) for r in records} <= book
    # A grid cell with a calibration expands to it, and its printed command carries it.
    grid = {"scale": "ci", "cells": [{"arch": "lenet5", "dataset": "digits", "calibration": "undefended"}]}
    [spec] = grid_runner.expand(grid)
    assert spec.calibration == "undefended"
    command = grid_runner.run_command(spec).split()
    args = build_parser().parse_args(command[3:])
    assert args.calibration == "undefended"
    assert grid_runner.run_command(replace(spec, calibration=None)).count("--calibration") == 0


def test_a_defended_record_without_calibration_is_the_undefended_cell() -> None:
    """Records written before target-matched calibration were calibrated on undefended shadow
    models: they must not count as the default (target-calibrated) cell, or a resumed grid
    would keep them and show their thresholds as target-calibrated."""
    spec = ExperimentSpec("lenet5", "mnist", defense="prune", params={"sparsity": 0.9})
    old = {"arch": "lenet5", "dataset_requested": "mnist", "scale": "ci", "defense": "prune",
           "params": {"pruning": "admm", "sparsity": 0.9}, "seed": 0, "identity": {}}
    assert grid_runner.record_cell_id(old) == grid_runner.cell_id(replace(spec, calibration="undefended"))
    assert grid_runner.record_cell_id({**old, "calibration": "target"}) == grid_runner.cell_id(spec)
    dense = {**old, "defense": "none", "params": {}}
    assert grid_runner.record_cell_id(dense) == "lenet5/mnist/ci/none/seed=0"
