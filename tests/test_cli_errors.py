"""Every user mistake on the command line: one line on stderr, exit status 2, no traceback,
before any long work starts; outputs that are not regular files are refused."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mcmia_helpers.cli import main

RUN = ["run", "--arch", "lenet5", "--dataset", "digits", "--scale", "ci", "--attacks", "loss"]


def _status(args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        status = main(args)
    except SystemExit as stop:  # argparse's own checks exit directly
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def _fails_in_one_line(args: list[str], capsys, *fragments: str) -> str:
    status, lines = _status(args, capsys)
    assert status == 2 and len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines
    return lines[0]


@pytest.fixture()
def no_training(monkeypatch):
    """Any attempt to start the experiment fails the test: the error must come first."""
    from mcmia_helpers import experiments

    def forbidden(*args, **kwargs):
        raise AssertionError("the experiment started before the input was checked")

    monkeypatch.setattr(experiments, "run_experiment", forbidden)
    monkeypatch.setattr(experiments, "prepare", forbidden)


@pytest.mark.parametrize("extra, fragments", [
    (["--seed", "1800000001"], ()),  # valid: below 2**31, checked in the dry run
    (["--seed", "2147483648"], ("too large", "2**31")),
    (["--seed", "99999999999999999999"], ("too large",)),
    (["--defense", "minmax", "--lam", "1e300"], ("--lam", "<= 1000")),
    (["--defense", "minmax", "--lam", "nan"], ("--lam", "not finite")),
    (["--defense", "dp", "--max-grad-norm", "1e300"], ("--max-grad-norm",)),
    (["--defense", "dp", "--max-grad-norm", "inf"], ("--max-grad-norm", "not finite")),
    (["--defense", "prune", "--sparsity", "-0.5"], ("--sparsity",)),
    (["--defense", "minmax", "--k-steps", "0"], ("--k-steps",)),
    (["--imagenet-size", "0"], ("--imagenet-size",)),
    (["--imagenet-classes", "0"], ("--imagenet-classes",)),
])
def test_bad_numbers_fail_in_one_line_before_training(extra, fragments, capsys, no_training) -> None:
    if not fragments:
        status, lines = _status([*RUN, *extra, "--dry-run"], capsys)
        assert status == 0, lines
        return
    _fails_in_one_line([*RUN, *extra], capsys, *fragments)


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "bogus", "cpu:x"])
def test_unusable_device_fails_in_one_line(device, capsys, monkeypatch, no_training) -> None:
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("MCMIA_DEVICE", device)
    _fails_in_one_line(RUN, capsys, "MCMIA_DEVICE", "cpu")


@pytest.mark.parametrize("variable", ["MCMIA_CACHE", "MCMIA_DATA"])
def test_cache_or_data_that_is_a_file_fails_in_one_line(variable, tmp_path, capsys, monkeypatch,
                                                        no_training) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv(variable, str(a_file / "sub") if variable == "MCMIA_DATA" else str(a_file))
    _fails_in_one_line(RUN, capsys, variable)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere permissions allow")
@pytest.mark.parametrize("variable", ["MCMIA_CACHE", "MCMIA_DATA"])
def test_unwritable_cache_or_data_fails_in_one_line(variable, tmp_path, capsys, monkeypatch,
                                                    no_training) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv(variable, str(locked / "sub"))
    try:
        _fails_in_one_line(RUN, capsys, variable, "writable")
    finally:
        locked.chmod(stat.S_IRWXU)


def test_out_on_a_device_is_refused_and_the_device_kept(tmp_path, capsys, no_training) -> None:
    """As root, ``--out /dev/full`` used to replace the device node by the record; a FIFO here
    stands for any path that is not a regular file."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _fails_in_one_line([*RUN, "--out", str(fifo)], capsys, "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    if Path("/dev/full").exists():
        _fails_in_one_line([*RUN, "--out", "/dev/full"], capsys, "/dev/full")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("flag", ["--out", "--save-scores"])
def test_output_naming_a_folder_is_refused(flag, tmp_path, capsys, monkeypatch, no_training) -> None:
    monkeypatch.chdir(tmp_path)
    _fails_in_one_line([*RUN, flag, "nodir/"], capsys, "names a folder")
    assert not (tmp_path / "nodir").exists()
    (tmp_path / "adir").mkdir()
    _fails_in_one_line([*RUN, flag, "adir"], capsys, "a folder")


@pytest.mark.parametrize("flag", ["--out", "--save-scores"])
def test_output_in_an_unwritable_place_fails_before_training(flag, tmp_path, capsys, no_training) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails_in_one_line([*RUN, flag, str(a_file / "r.json")], capsys, "not a writable folder")


def test_grid_out_on_a_folder_is_refused(tmp_path, capsys) -> None:
    _fails_in_one_line(["grid", "--config", "ci", "--out", str(tmp_path)], capsys, "a folder")


@pytest.mark.parametrize("case", ["empty", "corrupt"])
def test_bad_imagenet_root_fails_in_one_line(case, tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    from mcmia_helpers import data

    monkeypatch.setenv("MCMIA_DATA", str(tmp_path / "data"))
    root = tmp_path / "imagenet"
    root.mkdir()
    if case == "corrupt":
        (root / "c0").mkdir()
        Image.new("RGB", (9, 9)).save(root / "c0" / "ok.png")
        (root / "c0" / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    data._load_raw.cache_clear()
    _fails_in_one_line(["run", "--arch", "lenet5", "--dataset", "imagenet", "--imagenet-root",
                        str(root), "--imagenet-size", "8"], capsys,
                       "no images" if case == "empty" else "bad.jpg")


def test_dry_run_checks_everything_and_trains_nothing(capsys, no_training) -> None:
    status, _ = _status([*RUN, "--defense", "dp", "--epsilon", "4", "--dry-run"], capsys)
    assert status == 0
    status, _ = _status(["grid", "--config", "ci", "--out", "/tmp/never-written.jsonl", "--dry-run"], capsys)
    assert status == 0 and not Path("/tmp/never-written.jsonl").exists()


def test_a_results_line_that_is_not_an_object_is_set_aside(tmp_path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('[1, 2]\n"text"\n' + json.dumps({"cell_id": "x"}) + "\n")
    status, lines = _status(["grid", "--config", "ci", "--out", str(out), "--dry-run"], capsys)
    assert status == 0 and any("damaged line(s) 1, 2" in line for line in lines), lines
