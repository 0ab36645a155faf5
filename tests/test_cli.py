"""The command line: records, reproducibility, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import BLOCKED
from mcmia_helpers.cli import main

RUN = ["run", "--arch", "lenet5", "--dataset", "fashion-mnist", "--scale", "ci", "--attacks", "loss"]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcmia_helpers", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


@pytest.mark.parametrize("args, fragment", [
    (["run", "--arch", "alexnet", "--dataset", "digits"], "alexnet"),
    (["run", "--arch", "lenet5", "--dataset", "svhn"], "svhn"),
    (["run", "--arch", "lenet5", "--dataset", "digits", "--defense", "magic"], "magic"),
    (["run", "--arch", "lenet5", "--dataset", "digits", "--seed", "-3"], "negative"),
    (["run", "--arch", "lenet5", "--dataset", "digits", "--seed", "x"], "not an integer"),
    (["run", "--arch", "lenet5", "--dataset", "digits", "--out", "/proc/nope/r.json"], "writable"),
    (["run", "--arch", "lenet5", "--dataset", "digits", "--scale", "huge"], "huge"),
    (["run", "--arch", "lenet5", "--dataset", "imagenet", "--imagenet-root", "/no/such/dir"], "not a folder"),
    (["data", "fetch", "mnist"], "mnist"),
])
def test_bad_input_exits_2_with_one_line(args, fragment, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MCMIA_DATA", str(tmp_path))
    blocked_before = len(BLOCKED)
    try:
        status = main(args)
    except SystemExit as stop:  # argparse's own checks exit directly
        status = stop.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], stderr
    if args[:2] == ["data", "fetch"]:  # it tried to download, and the test guard refused
        assert len(BLOCKED) > blocked_before


def test_offline_cifar10_names_the_problem_and_the_fix(tmp_path) -> None:
    """A real process: exit status 2 and one line, no traceback (offline, or no data folder)."""
    result = _cli("run", "--arch", "resnet18", "--dataset", "cifar10",
                  env={"MCMIA_DATA": str(tmp_path / "empty")})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cifar10" in result.stderr and "stand-in" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture()
def other_thread_count(monkeypatch):
    """torch reports a thread count other than the session's real one (really running with more
    threads than cores is minutes slower on a busy 2-core machine): the record must take the
    count from torch at run time, not assume one."""
    threads = torch.get_num_threads() + 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    return threads


def test_run_writes_a_record_and_is_reproducible(tmp_path, monkeypatch, other_thread_count) -> None:
    records = []
    for i in range(2):
        # a fresh cache each time: the second run retrains and must give the same numbers
        monkeypatch.setenv("MCMIA_CACHE", str(tmp_path / f"cache{i}"))
        out = tmp_path / f"r{i}.json"
        assert main([*RUN, "--seed", "3", "--out", str(out)]) == 0
        records.append(json.loads(out.read_text()))
        assert (tmp_path / f"r{i}.split.json").exists()
    a, b = records
    for key in ("arch", "dataset_requested", "dataset_used", "scale", "seed", "defense",
                "split_sizes", "train_acc", "test_acc", "member_acc", "nonmember_acc",
                "params_total", "params_nonzero", "wall_time_s", "package_version", "torch_threads"):
        assert key in a, key
    assert a["torch_threads"] == b["torch_threads"] == other_thread_count  # the count it ran with
    assert a["dataset_used"] == "fashion-mnist" and a["params_total"] == 61_706
    for key in ("train_acc", "test_acc", "member_acc", "nonmember_acc", "split_digest", "attacks"):
        assert a[key] == b[key], key
    assert set(a["attacks"]["loss"]) >= {"accuracy", "auc", "advantage", "tpr_at_1pct_fpr",
                                         "tpr_at_0_1pct_fpr", "ci95"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vgg16", "mobilenetv2", "resnet18"])
def test_cifar_architectures_run_on_the_32x32_standin(arch, tmp_path) -> None:
    out = tmp_path / "r.json"
    assert main(["run", "--arch", arch, "--dataset", "cifar10", "--standin", "fashion-mnist",
                 "--scale", "ci", "--attacks", "loss,confidence", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["dataset_requested"] == "cifar10" and record["dataset_used"] == "fashion-mnist"
    assert record["dataset_standin"] is True and "STAND-IN" in record["dataset_description"]
    assert record["test_acc"] > 0.3  # a few epochs on 256 images already beat chance (0.1)


def test_help_lists_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["run", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for word in ("lenet5", "resnet18", "fashion-mnist", "imagenet", "none"):
        assert word in out
