"""The grid runner: cells expand, finished cells are skipped, an interrupt loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcmia_helpers import grid as grid_runner
from mcmia_helpers.cli import main
from mcmia_helpers.errors import UserError

from grid_texts import TINY


def test_expand_lists_into_cells() -> None:
    grid = {"seeds": [0, 1], "cells": [{"arch": "lenet5", "dataset": "digits",
                                        "defenses": [{"defense": "none"}]}]}
    specs = list(grid_runner.expand(grid, scale="ci"))
    assert [grid_runner.cell_id(s) for s in specs] == ["lenet5/digits/ci/none/seed=0",
                                                       "lenet5/digits/ci/none/seed=1"]
    command = grid_runner.run_command(specs[1])
    assert command.startswith("python -m mcmia_helpers run --arch lenet5 --dataset digits")
    assert "--seed 1" in command


def test_grid_resumes_after_an_interrupt_between_cells(tmp_path, monkeypatch) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(TINY)
    out = tmp_path / "results.jsonl"
    real_run = grid_runner.run_experiment
    calls = []

    def flaky(spec):
        calls.append(grid_runner.cell_id(spec))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C as the third cell starts (inside a cell: test_grid_commands.py)
        return real_run(spec)

    monkeypatch.setattr(grid_runner, "run_experiment", flaky)
    with pytest.raises(KeyboardInterrupt):
        grid_runner.run_grid(grid_runner.load_grid(config), out, progress=False)
    assert len(grid_runner.read_records(out)) == 2

    monkeypatch.setattr(grid_runner, "run_experiment", real_run)
    again = grid_runner.run_grid(grid_runner.load_grid(config), out, progress=False)
    assert [r["cell_id"] for r in again] == ["lenet5/digits/ci/none/attacks=loss/seed=2"]
    ids = [r["cell_id"] for r in grid_runner.read_records(out)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3
    assert grid_runner.run_grid(grid_runner.load_grid(config), out, progress=False) == []


def test_shipped_grids_by_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # names resolve without a clone's folders around
    assert grid_runner.config_path("book") == grid_runner.BUNDLED_CONFIGS / "book.yaml"
    assert grid_runner.config_path("paper.yaml") == grid_runner.BUNDLED_CONFIGS / "paper.yaml"
    assert grid_runner.bundled_names() == ["book", "ci", "paper"]
    own = tmp_path / "book.yaml"  # an existing file of the same name wins
    own.write_text("cells: []\n")
    assert grid_runner.config_path("book.yaml") == Path("book.yaml")
    with pytest.raises(UserError, match="shipped grids \\(book, ci, paper\\)"):
        grid_runner.config_path("books")
    with pytest.raises(UserError, match="does not exist"):
        grid_runner.config_path(tmp_path / "sub" / "book.yaml")


def test_bad_grid_configs(tmp_path, capsys) -> None:
    with pytest.raises(UserError, match="does not exist"):
        grid_runner.load_grid(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cells:\n  - arch: lenet5\n    dataset: digits\n    colour: red\n")
    with pytest.raises(UserError, match="colour"):
        grid_runner.load_grid(bad)
    assert main(["grid", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
