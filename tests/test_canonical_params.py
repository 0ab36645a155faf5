"""One spelling per experiment: defence parameters are canonical (defaults filled in, numbers
typed) before they enter a cache key, a cell id or a record, so that every spelling of one
experiment trains one model and names one cell."""

from __future__ import annotations

from dataclasses import replace

import json
import shlex
from pathlib import Path

import pytest
import torch

from mcmia_helpers import experiments, training
from mcmia_helpers import grid as grid_runner
from mcmia_helpers.attacks.shadows import calibration_of
from mcmia_helpers.cli import main
from mcmia_helpers.errors import UserError
from mcmia_helpers.explorer import parameter_label

ROOT = Path(__file__).resolve().parents[1]
DP_RUN = ["run", "--arch", "lenet5", "--dataset", "digits", "--scale", "ci", "--defense", "dp",
          "--attacks", "loss"]


class _Stop(Exception):
    """Raised instead of training, once the DP model's cache key is known."""


def test_three_dp_spellings_share_one_model(tmp_path, monkeypatch) -> None:
    """No --epsilon, --epsilon 4 and a grid's ``epsilon: 4`` used to train three models."""
    keys = []
    real_key = training.config_key

    def spy(config):
        key = real_key(config)
        if config.get("defense") == "dp" and "dp" in config:
            keys.append(key)
            raise _Stop
        return key

    monkeypatch.setattr(training, "config_key", spy)
    for extra in ([], ["--epsilon", "4"]):
        with pytest.raises(_Stop):
            main([*DP_RUN, *extra])
    config = tmp_path / "grid.yaml"
    config.write_text("scale: ci\nseeds: [0]\nattacks: [loss]\ncells:\n"
                      "  - {arch: lenet5, dataset: digits, defenses: [{defense: dp, epsilon: 4}]}\n")
    with pytest.raises(_Stop):
        grid_runner.run_grid(grid_runner.load_grid(config), tmp_path / "r.jsonl", progress=False)
    assert len(keys) == 3 and len(set(keys)) == 1, keys


@pytest.mark.parametrize("defense, given, expected", [
    ("none", {}, {}),
    ("dp", {}, {"epsilon": 4.0, "max_grad_norm": 1.0}),
    ("dp", {"epsilon": 4, "delta": None}, {"epsilon": 4.0, "max_grad_norm": 1.0}),
    ("minmax", {"lam": 3}, {"lam": 3.0, "k_steps": 1}),
    ("prune", {"sparsity": 0.9}, {"pruning": "admm", "sparsity": 0.9}),
    ("prune+minmax", {"lam": 3, "sparsity": 0.9},
     {"k_steps": 1, "lam": 3.0, "pruning": "admm", "sparsity": 0.9}),
])
def test_canonical_params(defense, given, expected) -> None:
    got = grid_runner.canonical_params(defense, given)
    assert got == expected and {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}
    assert grid_runner.canonical_params(defense, got) == got  # idempotent


def test_canonical_params_reject_what_the_defence_does_not_take() -> None:
    with pytest.raises(UserError, match="--lam does not apply"):
        grid_runner.canonical_params("dp", {"lam": 3})
    with pytest.raises(UserError, match="not finite"):
        grid_runner.canonical_params("minmax", {"lam": float("nan")})


def _fake_run(spec, **kwargs):
    """A record of what would run, without running it."""
    return {"arch": spec.arch, "dataset_requested": spec.dataset, "scale": spec.scale,
            "defense": spec.defense, "params": dict(spec.params), "seed": spec.seed,
            "identity": experiments.spec_identity(spec), "dataset_description": "not run (test)",
            "calibration": calibration_of(spec)}


@pytest.mark.parametrize("name", grid_runner.bundled_names())
def test_every_printed_command_completes_its_cell(name, tmp_path, monkeypatch, capsys) -> None:
    """``grid --print-commands``, each line run, the records concatenated: every cell is done.
    In the shipped ci grid, 2 of 9 cells (``lam: 3``, ``epsilon: 4``) used to stay missing."""
    monkeypatch.setattr(experiments, "run_experiment", _fake_run)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results.jsonl"
    assert main(["grid", "--config", name, "--out", str(results), "--print-commands"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == len(list(grid_runner.expand(grid_runner.load_grid(name))))
    for line in commands:
        args = shlex.split(line)
        assert args[:4] == ["python", "-m", "mcmia_helpers", "run"]
        assert main(args[3:]) == 0
    records = sorted((tmp_path / "records").glob("cell-*.json"))
    assert len(records) == len(commands)
    results.write_text("".join(json.dumps(json.loads(p.read_text())) + "\n" for p in records))
    capsys.readouterr()
    assert main(["grid", "--config", name, "--out", str(results), "--print-commands"]) == 0
    assert capsys.readouterr().out == ""  # nothing left to run


def test_records_written_before_canonical_params_still_count() -> None:
    """The book's stored records (``lam=3``, ``epsilon=4``) are done cells of the book grid: the
    chapters do not recompute them."""
    book = grid_runner.load_grid("book")
    wanted = {grid_runner.cell_id(s) for s in grid_runner.expand(book)}
    stored = ROOT / "results" / "book.jsonl"
    assert wanted <= grid_runner.done_cells(stored)
    old = {"arch": "lenet5", "dataset_requested": "mnist", "scale": "book", "defense": "minmax",
           "params": {"lam": 3}, "seed": 0, "cell_id": "lenet5/mnist/book/minmax/lam=3/seed=0",
           "calibration": "target"}
    assert grid_runner.record_cell_id(old) == "lenet5/mnist/book/minmax/k_steps=1/lam=3.0/seed=0"


def test_labels_agree_for_old_and_canonical_records() -> None:
    assert parameter_label({"epsilon": 4}) == parameter_label({"epsilon": 4.0, "max_grad_norm": 1.0})
    assert parameter_label({"lam": 3}) == parameter_label({"lam": 3.0, "k_steps": 1}) == "lam=3"
    assert parameter_label({"lam": 3.0, "k_steps": 2}) == "lam=3, k_steps=2"


# --------------------------------------------------------------------------- old cache keys


def test_legacy_spellings_never_drop_a_value_that_is_not_the_default() -> None:
    spellings = training.legacy_spellings({"epsilon": 8.0, "max_grad_norm": 1.0},
                                          {"epsilon": 4.0, "max_grad_norm": 1.0})
    assert spellings and all("epsilon" in s for s in spellings)
    assert {"epsilon": 8} in spellings and {"epsilon": 8.0} in spellings
    canonical = {"epsilon": 8.0, "max_grad_norm": 1.0}
    assert not any(s == canonical and all(type(s[k]) is type(canonical[k]) for k in s)
                   for s in spellings)  # the canonical spelling itself is not an alias


def test_model_cached_under_an_old_spelling_is_found(digits, tmp_path) -> None:
    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))

    def train(model, checkpoint):
        return training.fit(model, digits, torch.arange(32), training.TrainConfig(epochs=1, batch_size=32),
                            checkpoint_path=checkpoint)

    old = {"defense": "dp", "params": {"epsilon": 4}}  # what a grid's `epsilon: 4` keyed before
    first, info = training.load_or_train(old, build, train, cache=tmp_path)
    canonical = {"epsilon": 4.0, "max_grad_norm": 1.0}
    aliases = [{**old, "params": p} for p in training.legacy_spellings(canonical, canonical)]
    again, info2 = training.load_or_train({**old, "params": canonical}, build,
                                          lambda m, c: pytest.fail("trained again"),
                                          cache=tmp_path, aliases=aliases)
    assert info2["cached"] is True
    assert (tmp_path / f"{training.config_key({**old, 'params': canonical})}.pt").exists()
    for key, value in again.state_dict().items():
        assert torch.equal(value, first.state_dict()[key])


def test_cell_ids_tell_imagenet_forms_and_augmentation_apart() -> None:
    """Two cells that differ only in the ImageNet size or an explicit augmentation choice are
    different cells (before, the grid skipped the second as done)."""
    from mcmia_helpers.context import ExperimentSpec

    base = ExperimentSpec("resnet18", "imagenet", scale="paper", imagenet_size=64)
    ids = {grid_runner.cell_id(base), grid_runner.cell_id(replace(base, imagenet_size=224)),
           grid_runner.cell_id(replace(base, augment=True)),
           grid_runner.cell_id(replace(base, augment=False))}
    assert len(ids) == 4
    assert "px=224" in grid_runner.cell_id(replace(base, imagenet_size=224))
    cifar = ExperimentSpec("resnet18", "cifar10", scale="paper")
    assert grid_runner.cell_id(cifar) == "resnet18/cifar10/paper/none/seed=0"  # unchanged ids
    record = {"arch": "resnet18", "dataset_requested": "imagenet", "scale": "paper",
              "defense": "none", "params": {}, "seed": 0,
              "identity": experiments.spec_identity(replace(base, imagenet_size=224))}
    assert grid_runner.record_cell_id(record) == grid_runner.cell_id(replace(base, imagenet_size=224))
    line = grid_runner.run_command(replace(cifar, augment=False))
    assert "--no-augment" in line
