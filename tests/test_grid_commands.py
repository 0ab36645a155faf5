"""The grid from the command line and from the chapters: ``--print-commands`` lines parse back to
the same cells, ``--only`` selects, ``load_or_run`` computes only what is missing, an interrupt in
the middle of a cell resumes to the same record, and Ctrl-C ends a run with exit status 130."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcmia_helpers import experiments, training
from mcmia_helpers import grid as grid_runner
from mcmia_helpers.attacks.shadows import calibration_of
from mcmia_helpers.cli import main

from grid_texts import TINY


def _fake_record(spec) -> dict:
    """What ``run_experiment`` would return, for the fields the grid reads (no training)."""
    return {"arch": spec.arch, "dataset_requested": spec.dataset, "scale": spec.scale,
            "defense": spec.defense, "params": dict(spec.params), "seed": spec.seed,
            "dataset_description": f"fake {spec.dataset}", "calibration": calibration_of(spec),
            "attacks": {name: {"auc": 0.5} for name in grid_runner.needed_attacks(spec)}}


@pytest.fixture()
def captured_runs(monkeypatch) -> list:
    """``run_experiment`` replaced by a recorder: every spec the code under test would run."""
    seen: list = []

    def fake(spec, **kwargs):
        seen.append(spec)
        return _fake_record(spec)

    monkeypatch.setattr(experiments, "run_experiment", fake)
    monkeypatch.setattr(grid_runner, "run_experiment", fake)
    return seen


# --------------------------------------------------------------------------- --print-commands


@pytest.mark.parametrize("name", ["ci", "book", "paper"])
def test_printed_commands_parse_back_to_the_same_cells(name, tmp_path, monkeypatch, capsys,
                                                       captured_runs) -> None:
    """Each line of ``grid --print-commands``, run as a command, asks for exactly its cell:
    every field of the experiment (defence parameters, stand-in, attacks, ImageNet options)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "records").mkdir()
    assert main(["grid", "--config", name, "--out", str(tmp_path / "r.jsonl"), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    specs = list(grid_runner.expand(grid_runner.load_grid(grid_runner.config_path(name))))
    assert len(lines) == len(specs)
    for line, spec in zip(lines, specs):
        argv = shlex.split(line)
        assert argv[:4] == ["python", "-m", "mcmia_helpers", "run"], line
        captured_runs.clear()
        assert main(argv[3:]) == 0, line
        assert captured_runs == [spec], line
    assert not (tmp_path / "r.jsonl").exists()  # printing runs nothing


def test_print_commands_skip_done_cells_and_follow_only(tmp_path, monkeypatch, capsys,
                                                        captured_runs) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "grid.yaml"
    config.write_text(TINY)
    out = tmp_path / "r.jsonl"
    spec0 = next(grid_runner.expand(grid_runner.load_grid(config)))
    out.write_text(json.dumps({**_fake_record(spec0), "cell_id": grid_runner.cell_id(spec0)}) + "\n")
    assert main(["grid", "--config", str(config), "--out", str(out), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("--seed ")[1].split()[0] for line in lines] == ["1", "2"]  # seed 0 is done
    assert main(["grid", "--config", str(config), "--out", str(out), "--print-commands",
                 "--only", "seed=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "--seed 2" in lines[0]
    assert captured_runs == []


def test_only_runs_just_the_matching_cells(tmp_path, captured_runs) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(TINY)
    out = tmp_path / "r.jsonl"
    grid = grid_runner.load_grid(config)
    computed = grid_runner.run_grid(grid, out, only="seed=1", progress=False)
    assert [r["cell_id"] for r in computed] == ["lenet5/digits/ci/none/attacks=loss/seed=1"]
    assert [s.seed for s in captured_runs] == [1]
    assert main(["grid", "--config", str(config), "--out", str(out), "--only", "seed=2",
                 "--no-progress"]) == 0
    assert [s.seed for s in captured_runs] == [1, 2]
    assert sorted(r["seed"] for r in grid_runner.read_records(out)) == [1, 2]


# --------------------------------------------------------------------------- load_or_run


def test_load_or_run_reads_stored_cells_and_computes_only_missing_ones(tmp_path, captured_runs) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(TINY)
    results = tmp_path / "r.jsonl"
    specs = list(grid_runner.expand(grid_runner.load_grid(config)))
    foreign = {"arch": "vgg16", "dataset_requested": "cifar10", "scale": "ci", "defense": "none",
               "params": {}, "seed": 0, "cell_id": "vgg16/cifar10/ci/none/seed=0"}
    stored = [{**_fake_record(s), "cell_id": grid_runner.cell_id(s), "stored": True} for s in specs[:2]]
    results.write_text("".join(json.dumps(r) + "\n" for r in [foreign, *stored]))

    records = grid_runner.load_or_run(config, results)
    assert [s.seed for s in captured_runs] == [2]  # only the missing cell was computed
    assert sorted(r["seed"] for r in records) == [0, 1, 2]  # this grid's cells, not the foreign one
    assert all(r["arch"] == "lenet5" for r in records)
    assert sum(r.get("stored", False) for r in records) == 2

    again = grid_runner.load_or_run(config, results)  # complete now: read, nothing computed
    assert [s.seed for s in captured_runs] == [2]
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == \
        sorted(json.dumps(r, sort_keys=True) for r in records)


def test_load_or_run_counts_a_record_under_its_canonical_cell(tmp_path, captured_runs) -> None:
    """A record stored with an older spelling of its cell id (``lam=3`` before the parameters
    were canonical) is that cell: not computed again, and returned."""
    config = tmp_path / "grid.yaml"
    config.write_text(TINY.replace("{defense: none}", "{defense: minmax, lam: 3}").replace("[0, 1, 2]", "[0]"))
    spec = next(grid_runner.expand(grid_runner.load_grid(config)))
    legacy = {**_fake_record(spec), "params": {"lam": 3}, "cell_id": "lenet5/digits/ci/minmax/lam=3/seed=0"}
    assert legacy["cell_id"] != grid_runner.cell_id(spec)
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(legacy) + "\n")
    records = grid_runner.load_or_run(config, results)
    assert captured_runs == [] and len(records) == 1 and records[0]["params"] == {"lam": 3}


# --------------------------------------------------------------------------- interrupts


class _InterruptMidCell:
    """Wraps ``run_experiment``: in the ``cell``-th cell, Ctrl-C right after training has saved
    its ``after``-th epoch checkpoint (the cell is half done: a partial checkpoint exists)."""

    def __init__(self, monkeypatch, cell: int, after: int) -> None:
        self.calls, self.saves, self.cell, self.after = 0, 0, cell, after
        self.real_run, self.real_save = grid_runner.run_experiment, training.atomic_torch_save
        monkeypatch.setattr(grid_runner, "run_experiment", self.run)
        monkeypatch.setattr(training, "atomic_torch_save", self.save)

    def run(self, spec):
        self.calls += 1
        return self.real_run(spec)

    def save(self, obj, path, **kwargs):  # kwargs: the entry's own key (io.atomic_torch_save)
        self.real_save(obj, path, **kwargs)
        if self.calls == self.cell and str(path).endswith(".partial.pt"):
            self.saves += 1
            if self.saves == self.after:
                raise KeyboardInterrupt


def test_grid_interrupted_inside_a_cell_resumes_to_the_same_record(tmp_path, monkeypatch) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(TINY.replace("[0, 1, 2]", "[0, 1]"))
    grid = grid_runner.load_grid(config)
    cache, out = tmp_path / "cache", tmp_path / "r.jsonl"
    monkeypatch.setenv("MCMIA_CACHE", str(cache))
    with monkeypatch.context() as patch:
        interrupt = _InterruptMidCell(patch, cell=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            grid_runner.run_grid(grid, out, only="seed=1", progress=False)
    assert interrupt.calls == 1 and interrupt.saves == 2  # inside the cell's training
    assert not out.exists() or grid_runner.read_records(out) == []  # no half record
    partial = list(cache.rglob("*.partial.pt"))
    assert len(partial) == 1 and training.load_verified(partial[0])[0]["epoch"] == 1

    resumed = grid_runner.run_grid(grid, out, only="seed=1", progress=False)
    assert [r["seed"] for r in resumed] == [1]
    assert not list(cache.rglob("*.partial.pt"))
    assert [r["seed"] for r in grid_runner.read_records(out)] == [1]

    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "fresh-cache"))  # the same cell, never interrupted
    reference = grid_runner.run_grid(grid, tmp_path / "ref.jsonl", only="seed=1", progress=False)[0]
    differ = {k for k in reference if reference[k] != resumed[0].get(k)}
    assert differ <= {"wall_time_s"}, {k: (reference[k], resumed[0].get(k)) for k in differ}


def test_ctrl_c_ends_a_run_with_status_130(tmp_path) -> None:
    """A real process: SIGINT once the target's first epoch is checkpointed; exit status 130
    and one line saying how to resume; no record, the checkpoint kept (that a resumed run ends
    with the same record: the test above)."""
    cache = tmp_path / "cache"
    out = tmp_path / "r.json"
    env = {**os.environ, "MCMIA_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mcmia_helpers", "run", "--arch", "lenet5", "--dataset",
               "digits", "--scale", "ci", "--attacks", "loss", "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while not list(cache.rglob("*.partial.pt")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch checkpoint after 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "resume" in lines[0], stderr
    assert not out.exists() and list(cache.rglob("*.partial.pt"))
