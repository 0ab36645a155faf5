"""A grid cell is what it computes (issue 23, item 4): the id names the attacks, a changed
``attacks:`` list is computed again (its stale records named), a shorter list reuses a longer
record, old records count under the attacks they hold, and concurrent grids on one results
file share the work and record each cell once. ``run_experiment`` is replaced by a fake that
returns a record of the fields the grid reads, so nothing trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcmia_helpers import experiments
from mcmia_helpers import grid as grid_runner
from mcmia_helpers.attacks.shadows import calibration_of
from mcmia_helpers.cli import main

ROOT = Path(__file__).resolve().parents[1]

GRID = """
scale: ci
seeds: [0, 1]
attacks: {attacks}
cells:
  - arch: lenet5
    dataset: digits
    defenses:
      - {{defense: none}}
"""


def _fake_record(spec) -> dict:
    return {"arch": spec.arch, "dataset_requested": spec.dataset, "scale": spec.scale,
            "defense": spec.defense, "params": dict(spec.params), "seed": spec.seed,
            "identity": experiments.spec_identity(spec), "calibration": calibration_of(spec),
            "smoke_cap": None, "dataset_description": "fake",
            "attacks": {name: {"auc": 0.5} for name in grid_runner.needed_attacks(spec)}}


@pytest.fixture()
def runs(monkeypatch) -> list:
    seen: list = []

    def fake(spec, **kwargs):
        seen.append(spec)
        return _fake_record(spec)

    monkeypatch.setattr(grid_runner, "run_experiment", fake)
    monkeypatch.setattr(experiments, "run_experiment", fake)
    return seen


def _config(tmp_path: Path, attacks: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(attacks=attacks))
    return path


def test_the_cell_id_names_an_explicit_attacks_list_in_one_order() -> None:
    grid = {"seeds": [0], "cells": [{"arch": "lenet5", "dataset": "digits"}]}
    ids = {tuple(attacks): grid_runner.cell_id(next(grid_runner.expand({**grid, "attacks": attacks}, "ci")))
           for attacks in (["loss"], ["confidence", "loss"], ["loss", "confidence"])}
    assert ids[("loss",)] == "lenet5/digits/ci/none/attacks=loss/seed=0"
    assert ids[("confidence", "loss")] == ids[("loss", "confidence")] == \
        "lenet5/digits/ci/none/attacks=loss+confidence/seed=0"
    assert grid_runner.cell_id(next(grid_runner.expand(grid, "ci"))) == "lenet5/digits/ci/none/seed=0"


def test_a_smoke_cap_is_part_of_the_cell_id(monkeypatch) -> None:
    grid = {"seeds": [0], "cells": [{"arch": "lenet5", "dataset": "digits"}]}
    plain = grid_runner.cell_id(next(grid_runner.expand(grid, "paper")))
    monkeypatch.setenv("MCMIA_SMOKE", "2")
    smoked = grid_runner.cell_id(next(grid_runner.expand(grid, "paper")))
    assert smoked != plain and "smoke=2" in smoked
    record = {**_fake_record(next(grid_runner.expand(grid, "paper"))), "smoke_cap": {"batches": 2},
              "attacks_requested": None}  # as run_grid writes it for a cell of default attacks
    assert grid_runner.record_cell_id(record) == smoked


def test_a_changed_attacks_list_is_computed_again_and_its_stale_records_named(tmp_path, runs, capsys) -> None:
    out = tmp_path / "r.jsonl"
    assert main(["grid", "--config", str(_config(tmp_path, "[loss]")), "--out", str(out), "--no-progress"]) == 0
    assert len(runs) == 2
    capsys.readouterr()

    longer = _config(tmp_path, "[loss, confidence]")
    assert main(["grid", "--config", str(longer), "--out", str(out), "--dry-run"]) == 0
    err, said = capsys.readouterr()[::-1]
    assert "2 of 2 cells to run" in said
    assert "2 cell(s) have stale records" in err and "lacks confidence" in err
    assert main(["grid", "--config", str(longer), "--out", str(out), "--no-progress"]) == 0
    assert len(runs) == 4 and all(s.attacks == ("loss", "confidence") for s in runs[2:])
    assert "stale" in capsys.readouterr().err

    records = grid_runner.load_or_run(longer, out)
    assert len(records) == 2 and all(set(r["attacks"]) == {"loss", "confidence"} for r in records)
    assert len(runs) == 4

    # a shorter list is served by the longer record: nothing computed, nothing stale
    shorter = _config(tmp_path, "[confidence]")
    assert main(["grid", "--config", str(shorter), "--out", str(out), "--dry-run"]) == 0
    err, said = capsys.readouterr()[::-1]
    assert "0 of 2 cells to run" in said and "stale" not in err
    assert [set(r["attacks"]) for r in grid_runner.load_or_run(shorter, out)] == [{"loss", "confidence"}] * 2
    assert len(runs) == 4
    ids = [r["cell_id"] for r in grid_runner.read_records(out)]
    assert len(ids) == len(set(ids)) == 4  # each cell (attack list) once


def test_an_old_record_counts_under_the_attacks_it_holds(tmp_path, runs) -> None:
    """Documented rule: a record without ``attacks_requested`` (written before ids named the
    attacks) is the cell of the attacks its ``attacks`` mapping holds; one without an
    ``attacks`` mapping serves no cell that names attacks."""
    config = _config(tmp_path, "[loss, confidence]")
    specs = list(grid_runner.expand(grid_runner.load_grid(config)))
    old = [{**_fake_record(s), "cell_id": grid_runner.base_cell_id(s)} for s in specs]
    old[1]["attacks"] = {"loss": {"auc": 0.5}}  # computed before confidence was asked for
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert grid_runner.record_cell_id(old[0]) == grid_runner.cell_id(specs[0])
    assert grid_runner.find_record(specs[0], old) == old[0]
    assert grid_runner.find_record(specs[1], old) is None
    assert grid_runner.stale_records(specs[1], old) == ["confidence"]
    grid_runner.run_grid(grid_runner.load_grid(config), out, progress=False)
    assert [s.seed for s in runs] == [1]
    bare = {k: v for k, v in old[0].items() if k != "attacks"}
    assert grid_runner.find_record(specs[0], [bare]) is None


# --------------------------------------------------------------------------- concurrent grids

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from mcmia_helpers import experiments, grid as grid_runner
    from mcmia_helpers.attacks.shadows import calibration_of

    calls = sys.argv[3]

    def fake(spec, **kwargs):
        with open(calls, "a") as handle:  # one line per cell computed, by any process
            handle.write(grid_runner.cell_id(spec) + "\\n")
        time.sleep(0.6)  # a cell takes a while: the other grid must not compute it meanwhile
        return {"arch": spec.arch, "dataset_requested": spec.dataset, "scale": spec.scale,
                "defense": spec.defense, "params": dict(spec.params), "seed": spec.seed,
                "identity": experiments.spec_identity(spec), "calibration": calibration_of(spec),
                "smoke_cap": None, "dataset_description": "fake", "pid": os.getpid(),
                "attacks": {a: {"auc": 0.5} for a in grid_runner.needed_attacks(spec)}}

    grid_runner.run_experiment = fake
    folder = os.path.dirname(calls)
    open(os.path.join(folder, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):  # all workers start their grids at once
        time.sleep(0.01)
    grid_runner.run_grid(grid_runner.load_grid(sys.argv[1]), sys.argv[2], progress=False)
""")


def test_concurrent_grids_share_the_work_and_record_each_cell_once(tmp_path) -> None:
    import time

    config = tmp_path / "grid.yaml"
    config.write_text(GRID.format(attacks="[loss]").replace("[0, 1]", "[0, 1, 2, 3]"))
    out, calls = tmp_path / "r.jsonl", tmp_path / "calls.txt"
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, str(worker), str(config), str(out), str(calls)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    deadline = time.monotonic() + 180
    while len(list(tmp_path.glob("ready-*"))) < 2:  # every worker has imported and waits
        assert all(p.poll() is None for p in workers), [p.communicate() for p in workers]
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for process in workers:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    computed = calls.read_text().split()
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 4  # each cell once
    records = grid_runner.read_records(out)
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    assert len({r["pid"] for r in records}) >= 2  # the work was shared, not done by one grid
