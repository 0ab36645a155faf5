"""The ``paper`` scale exercised on the CPU (issue 13), with ``tools/paper_smoke.py``.

The whole grid (every cell, ImageNet at 64 and 224 px: 143 experiments at full width) takes
longer than ``make test`` allows on 2 cores, so it is ``make smoke`` (``.ci/run`` runs its
``defences`` coverage, every architecture, data form and defence once). Here: the smoke
cell list covers every cell of the shipped grid (no training), and three real smoke cells run end
to end at full width with the paper's recipe under the cap: LeNet-5 under DP-SGD on the named
stand-in, ResNet18 on a tiny 64 px ImageFolder under pruning + Min-Max (augmentation on, every
attack), and ResNet18's ImageNet form at 224 px; each record is checked by the smoke run's own
:func:`check_record`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time

import pytest

from book_files import ROOT
from mcmia_helpers.grid import cell_id, expand, load_grid
from mcmia_helpers.scales import SmokeCap, get_scale, smoke_cap
from mcmia_helpers import UserError

_spec = importlib.util.spec_from_file_location("paper_smoke", ROOT / "tools" / "paper_smoke.py")
paper_smoke = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_smoke)


def test_smoke_cells_cover_the_shipped_paper_grid(tmp_path) -> None:
    specs = paper_smoke.smoke_specs(tmp_path / "inet")
    shipped = {cell_id(s).replace("seed=1", "seed=0").replace("seed=2", "seed=0")
               for s in expand(load_grid("paper"))}
    ids = [paper_smoke.smoke_cell_id(s) for s in specs]
    assert len(ids) == len(set(ids))
    # every cell, every defence parameter; the 224-px ImageNet cells are cells of their own
    assert {cell_id(s) for s in specs if s.imagenet_size != 224 or s.dataset != "imagenet"} == shipped
    assert all("px=224" in cell_id(s) for s in specs if s.dataset == "imagenet" and s.imagenet_size == 224)
    sizes = {s.imagenet_size for s in specs if s.dataset == "imagenet"}
    assert sizes == {64, 224}
    assert all(s.standin == "fashion-mnist" for s in specs if s.dataset != "imagenet")
    assert all(s.scale == "paper" for s in specs)


def test_defences_coverage_runs_each_defence_once_per_architecture_and_form(tmp_path) -> None:
    grid = paper_smoke.smoke_specs(tmp_path / "inet")
    ci = paper_smoke.smoke_specs(tmp_path / "inet", coverage="defences")
    assert {paper_smoke.smoke_cell_id(s) for s in ci} < {paper_smoke.smoke_cell_id(s) for s in grid}

    def form(s):
        return s.arch, s.dataset, s.imagenet_size if s.dataset == "imagenet" else None

    forms = {form(s) for s in grid}
    assert len(forms) == 13  # 4 x (MNIST or CIFAR-10/100) + 3 ImageNet forms at 64 and 224 px
    assert sorted((form(s), s.defense) for s in ci) == sorted(
        {(form(s), s.defense) for s in grid})  # every defence of every form, exactly once
    firsts = {s.defense: s.params for s in ci if form(s) == ("lenet5", "mnist", None)}
    assert firsts["prune"]["sparsity"] == 0.9 and firsts["minmax"]["lam"] == 1.0
    assert firsts["dp"]["epsilon"] == 1.0 and firsts["prune+minmax"]["sparsity"] == 0.9
    with pytest.raises(ValueError, match="coverage"):
        paper_smoke.smoke_specs(tmp_path / "inet", coverage="some")


def test_smoke_cap_keeps_the_recipe_and_caps_the_cost(monkeypatch) -> None:
    monkeypatch.setenv("MCMIA_SMOKE", "2")
    capped = get_scale("paper")
    from mcmia_helpers.scales import _TABLE

    assert capped.smoke == SmokeCap(batches=2)
    for arch, paper in _TABLE["paper"].items():
        got = capped.for_arch(arch)
        for key in ("width", "optimizer", "lr", "weight_decay", "schedule", "augment"):
            assert getattr(got, key) == getattr(paper, key), (arch, key)
        assert got.batch_size == 8 and got.n_members == 16 and got.epochs == 1
        assert got.n_shadow_models == 1 and got.n_lira_models == 2  # LiRA: an IN and an OUT
    monkeypatch.setenv("MCMIA_SMOKE", "0")
    assert smoke_cap() is None and get_scale("paper").for_arch("vgg16").n_members == 10000
    monkeypatch.setenv("MCMIA_SMOKE", "lots")
    with pytest.raises(UserError, match="MCMIA_SMOKE"):
        get_scale("paper")


@pytest.mark.slow
def test_three_paper_cells_run_end_to_end(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MCMIA_SMOKE", "2")
    monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MCMIA_DATA", str(tmp_path / "data"))  # fashion-mnist from Debian's files
    root = paper_smoke.write_tiny_imagefolder(tmp_path / "inet")
    specs = [s for s in paper_smoke.smoke_specs(root)
             if (s.arch, s.dataset, s.defense, s.params.get("epsilon")) == ("lenet5", "mnist", "dp", 1)
             or (s.arch, s.dataset, s.imagenet_size, s.defense, s.params.get("sparsity"))
             == ("resnet18", "imagenet", 64, "prune+minmax", 0.9)
             or (s.arch, s.dataset, s.imagenet_size, s.defense) == ("resnet18", "imagenet", 224, "none")]
    assert len(specs) == 3, [paper_smoke.smoke_cell_id(s) for s in specs]
    out = tmp_path / "smoke.jsonl"
    started = time.perf_counter()
    results = list(paper_smoke.run(specs, out, log=lambda line: None))
    assert [problems for _, _, problems in results] == [[], [], []]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    lenet, resnet, resnet224 = records
    assert lenet["dataset_standin"] and "OFFLINE STAND-IN for mnist" in lenet["dataset_description"]
    assert lenet["augmentation"] == "none" and lenet["defense"] == "dp"
    assert resnet["augmentation"].startswith("random crop 64x64 from reflect-padding 8")
    assert resnet["dataset_source"]["imagenet_size"] == 64 and resnet["width"] == 1.0
    assert resnet["train_config"]["optimizer"] == "sgd" and resnet["train_config"]["schedule"] == "cosine"
    assert len(resnet["attacks"]) >= 8
    # The ImageNet form of ResNet18 (7x7 stem) at 224 px, its crop padding scaled with the image.
    assert resnet224["dataset_source"]["imagenet_size"] == 224
    assert resnet224["augmentation"].startswith("random crop 224x224 from reflect-padding 28")
    # A rerun finds both cells done and runs nothing.
    assert list(paper_smoke.run(specs, out)) == []
    # The defended cells' models were deleted once their records were written; the undefended
    # cell's (its target, shadow and LiRA models, which defended cells reuse) were kept.
    kept = {p.name for p in (tmp_path / "cache").rglob("*.pt")}
    assert kept and len(kept) <= 4 + 1  # the 224-px cell: target, 1 shadow, 2 LiRA (+ a group)
    print(f"three paper smoke cells: {time.perf_counter() - started:.0f} s")


def test_skip_leaves_out_the_matching_cells_before_any_runs(tmp_path, capsys, monkeypatch) -> None:
    """``--skip`` (what .ci/run uses for VGG16's 224-px form): a bad expression is one line and
    exit 2; one that, with --only, leaves nothing says so; nothing trains in either case."""
    monkeypatch.setattr(paper_smoke, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    monkeypatch.delenv("MCMIA_SMOKE", raising=False)
    out = str(tmp_path / "s.jsonl")
    assert paper_smoke.main(["--out", out, "--skip", "px=(224"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--skip" in err[0] and "regular expression" in err[0]
    assert paper_smoke.main(["--out", out, "--coverage", "defences", "--only", "vgg16/imagenet",
                             "--skip", "vgg16/imagenet/.*px=(64|224)"]) == 2
    assert "matches no smoke cell" in capsys.readouterr().err
    # main() caps its own cells only: a leaked MCMIA_SMOKE=2 would cap every later test of
    # this process (their cell ids would say smoke=2)
    assert "MCMIA_SMOKE" not in os.environ
    kept = [paper_smoke.smoke_cell_id(s) for s in paper_smoke.smoke_specs(tmp_path, coverage="defences")]
    skip = re.compile("vgg16/imagenet/.*px=224")
    assert sum(bool(skip.search(c)) for c in kept) == 5  # VGG16's five defences at 224 px
    assert any("resnet18/imagenet" in c and "px=224" in c for c in kept if not skip.search(c))
