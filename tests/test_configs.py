"""The shipped grids: every config expands into valid cells, and the ci grid runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcmia_helpers import grid as grid_runner

CONFIGS = grid_runner.BUNDLED_CONFIGS


@pytest.mark.parametrize("name", ["ci", "book", "paper"])
def test_config_expands_into_valid_cells(name: str) -> None:
    grid = grid_runner.load_grid(CONFIGS / f"{name}.yaml")
    specs = list(grid_runner.expand(grid))  # validates architecture, defence and parameters
    assert {s.arch for s in specs} == {"lenet5", "vgg16", "mobilenetv2", "resnet18"}
    ids = [grid_runner.cell_id(s) for s in specs]
    assert len(ids) == len(set(ids)) and all(s.scale == name for s in specs)


def test_paper_grid_is_the_papers() -> None:
    specs = list(grid_runner.expand(grid_runner.load_grid(CONFIGS / "paper.yaml")))
    assert {s.dataset for s in specs} == {"mnist", "cifar10", "cifar100", "imagenet"}
    assert {s.defense for s in specs} == {"none", "prune", "minmax", "prune+minmax", "dp"}
    assert not any(s.standin for s in specs)  # paper scale never substitutes data silently


@pytest.mark.slow
def test_ci_grid_runs_all_four_architectures(tmp_path) -> None:
    out = tmp_path / "ci.jsonl"
    grid = grid_runner.load_grid(CONFIGS / "ci.yaml")
    grid_runner.run_grid(grid, out, progress=False)
    records = grid_runner.read_records(out)
    assert len(records) == len(list(grid_runner.expand(grid)))
    assert {r["arch"] for r in records} == {"lenet5", "vgg16", "mobilenetv2", "resnet18"}
    for r in records:
        assert r["dataset_requested"] in ("mnist", "cifar10") and r["dataset_used"] == "fashion-mnist"
        assert set(r["attacks"]) == {"loss", "shadow_top3"}
        assert 0.0 <= r["attacks"]["loss"]["auc"] <= 1.0 and r["test_acc"] > 0.1
        if r["defense"] in ("prune", "prune+minmax"):
            assert r["compression_ratio"] > 5
        if r["defense"] == "dp":
            assert abs(r["epsilon"] - 4) / 4 < 0.1
