"""Every check before any training (issue 23, item 5): every file a command names is read,
parsed and validated, every output is probed writable and distinct, and sizes are bounded,
all before the first model trains; ``--dry-run`` runs exactly those checks. Junk of every kind a
flag accepts (binary, empty, huge, wrong YAML types, a "billion laughs" alias bomb) is one line
and exit status 2."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcmia_helpers.cli import main
from mcmia_helpers.validation import MAX_GRID_CELLS, MAX_INPUT_BYTES, MAX_YAML_NODES, MAX_ZOO_MODELS

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--arch", "lenet5", "--dataset", "digits", "--scale", "ci", "--attacks", "loss"]
ZOO = ["zoo", "--arch", "lenet5", "--dataset", "digits", "--scale", "ci"]

#: 522 bytes of YAML whose nested aliases expand to 10**9 leaves: the probe's "billion laughs".
ALIAS_BOMB = ("a: &a [x, x, x, x, x, x, x, x, x, x]\n"
              + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                        for i in range(8))
              + "cells: [*i]\n")


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def expired(*_):
        raise AssertionError(f"still running after {seconds} s: the input was not refused at once")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _status(args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        status = main(args)
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err.strip().splitlines()


def _fails_in_one_line(args: list[str], capsys, *fragments: str) -> str:
    status, lines = _status(args, capsys)
    assert status == 2 and len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture()
def no_training(monkeypatch):
    """Any attempt to load data or train fails the test: the error must come first."""
    from mcmia_helpers import experiments, zoo
    from mcmia_helpers.zoo import runner

    def forbidden(*args, **kwargs):
        raise AssertionError("training started before the inputs were checked")

    for module, name in ((experiments, "run_experiment"), (experiments, "prepare"),
                         (zoo, "run_zoo"), (runner, "prepare_zoo")):
        monkeypatch.setattr(module, name, forbidden)


# --------------------------------------------------------------------------- outputs


def test_colliding_outputs_are_refused_before_training(tmp_path, capsys, no_training) -> None:
    record, scores = tmp_path / "r.json", tmp_path / "s.npz"
    _fails_in_one_line([*RUN, "--out", str(record), "--save-scores", str(record)], capsys,
                       "--save-scores", "same file as --out")
    # the split file is written next to --out: r.split.json
    _fails_in_one_line([*RUN, "--out", str(record), "--save-scores", str(tmp_path / "r.split.json")],
                       capsys, "same file as the split file")
    # another spelling of the same path
    _fails_in_one_line([*RUN, "--out", str(record), "--save-scores", str(tmp_path / "." / "r.json")],
                       capsys, "same file")
    record.write_text("{}")  # an earlier record: a link to it is the same file
    link = tmp_path / "link.npz"
    link.symlink_to(record)
    _fails_in_one_line([*RUN, "--out", str(record), "--save-scores", str(link)], capsys, "same file")
    spec = tmp_path / "spec.json"
    spec.write_text('{"default": 0.5}')
    _fails_in_one_line([*RUN, "--defense", "prune", "--sparsity-spec", str(spec), "--out", str(spec)],
                       capsys, "same file as input --sparsity-spec")
    _fails_in_one_line([*ZOO, "--out", str(scores), "--save-scores", str(scores), "--dry-run"], capsys,
                       "same file as --out")
    assert main([*RUN, "--out", str(record), "--save-scores", str(scores), "--dry-run"]) == 0
    assert record.read_text() == "{}" and not scores.exists()  # the checks write nothing


def test_grid_results_file_may_not_be_the_grid_file(tmp_path, capsys) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("cells:\n  - {arch: lenet5, dataset: digits}\n")
    _fails_in_one_line(["grid", "--config", str(config), "--out", str(config), "--dry-run"], capsys,
                       "same file as input --config")
    assert config.read_text().startswith("cells:")


def test_an_output_nothing_can_be_created_in_is_refused_up_front(capsys, no_training) -> None:
    """``/proc`` takes no new file even for root, for whom permission bits say yes."""
    for flag in ("--out", "--save-scores"):
        _fails_in_one_line([*RUN, flag, "/proc/mcmia-scores.npz"], capsys, flag, "/proc")
    _fails_in_one_line([*ZOO, "--save-scores", "/proc/mcmia-scores.npz", "--dry-run"], capsys, "/proc")


# --------------------------------------------------------------------------- sparsity specs


def _junk_files(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind of junk, as JSON and as YAML where the kind allows."""
    files = {}

    def write(name: str, data: bytes) -> None:
        files[name] = tmp_path / name
        files[name].write_bytes(data)

    write("binary.json", bytes(range(256)) * 4)
    write("binary.yaml", b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)))
    write("empty.json", b"")
    write("empty.yaml", b"")
    write("huge.json", b"{" + b" " * MAX_INPUT_BYTES + b"}")
    write("list.yaml", b"- 0.5\n- 0.9\n")
    write("text.yaml", b"just words\n")
    write("nested.json", b"[" * 100_000 + b"]" * 100_000)
    write("bomb.yaml", ALIAS_BOMB.encode())
    write("not-a-number.yaml", b"default: lots\n")
    write("out-of-range.json", b'{"default": 1.5}')
    write("bad-syntax.yaml", b"default: [0.5\n")
    (tmp_path / "folder.json").mkdir()
    files["folder.json"] = tmp_path / "folder.json"
    files["missing.json"] = tmp_path / "missing.json"
    return files


def test_junk_sparsity_specs_fail_in_one_line_on_every_command(tmp_path, capsys, no_training) -> None:
    files = _junk_files(tmp_path)
    with _deadline(60):
        for name, path in files.items():
            _fails_in_one_line([*RUN, "--defense", "prune", "--sparsity-spec", str(path), "--dry-run"],
                               capsys, "--sparsity-spec")
            _fails_in_one_line([*ZOO, "--defense", "prune", "--sparsity-spec", str(path), "--dry-run"],
                               capsys, "--sparsity-spec")
            grid = tmp_path / f"grid-{name}.yaml"
            grid.write_text("cells:\n  - arch: lenet5\n    dataset: digits\n    defenses:\n"
                            f"      - {{defense: prune, sparsity_spec: {json.dumps(str(path))}}}\n")
            _fails_in_one_line(["grid", "--config", str(grid), "--out", str(tmp_path / "r.jsonl"),
                                "--dry-run"], capsys, "sparsity_spec")


def test_sizes_are_named_in_the_error(tmp_path, capsys) -> None:
    files = _junk_files(tmp_path)
    line = _fails_in_one_line([*RUN, "--defense", "prune", "--sparsity-spec", str(files["huge.json"]),
                               "--dry-run"], capsys)
    assert f"limit of {MAX_INPUT_BYTES} bytes" in line
    line = _fails_in_one_line([*RUN, "--defense", "prune", "--sparsity-spec", str(files["bomb.yaml"]),
                               "--dry-run"], capsys)
    assert f"limit of {MAX_YAML_NODES}:" in line


def test_a_sparsity_spec_naming_an_unknown_layer_fails_at_dry_run(tmp_path, capsys, no_training) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("features.99: 0.5\ndefault: 0.9\n")
    line = _fails_in_one_line([*RUN, "--defense", "prune", "--sparsity-spec", str(spec), "--dry-run"],
                              capsys, "unknown layer 'features.99'", "lenet5")
    assert "prunable layers are" in line
    _fails_in_one_line(["run", "--arch", "vgg16", "--dataset", "cifar10", "--defense", "prune",
                        "--sparsity-spec", str(spec), "--dry-run"], capsys, "features.99")
    _fails_in_one_line([*ZOO, "--defense", "prune", "--sparsity-spec", str(spec), "--dry-run"], capsys,
                       "features.99")
    grid = tmp_path / "grid.yaml"
    grid.write_text("cells:\n  - arch: lenet5\n    dataset: digits\n    defenses:\n"
                    f"      - {{defense: prune, sparsity_spec: {json.dumps(str(spec))}}}\n")
    _fails_in_one_line(["grid", "--config", str(grid), "--out", str(tmp_path / "r.jsonl"), "--dry-run"],
                       capsys, "features.99")


def test_a_sparsity_spec_of_real_layers_passes_the_dry_run(tmp_path, capsys, no_training) -> None:
    """The layer names of the real model: what the check accepts is what pruning prunes."""
    import torch

    from mcmia_helpers.defences.compression import prunable_layers
    from mcmia_helpers.models import build_model

    for arch, dataset, channels in (("lenet5", "digits", 1), ("resnet18", "cifar10", 3)):
        names = list(prunable_layers(build_model(arch, 10, channels, 32, width=0.25)))
        spec = tmp_path / f"{arch}.json"
        spec.write_text(json.dumps({names[0]: 0.5, f"{names[-1]}.weight": 0.2, "default": 0.9}))
        status, lines = _status(["run", "--arch", arch, "--dataset", dataset, "--defense", "prune",
                                 "--sparsity-spec", str(spec), "--dry-run"], capsys)
        assert status == 0, lines
    assert torch.is_tensor(torch.zeros(1))


# --------------------------------------------------------------------------- grid files and sizes


def test_the_alias_bomb_is_refused_at_once(tmp_path, capsys) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) <= 600
    with _deadline(20):
        line = _fails_in_one_line(["grid", "--config", str(bomb), "--out", str(tmp_path / "r.jsonl"),
                                   "--dry-run"], capsys, "aliases followed", f"limit of {MAX_YAML_NODES}:")
    assert "bomb.yaml" in line
    loop = tmp_path / "loop.yaml"
    loop.write_text("cells: &c\n  - arch: lenet5\n    dataset: digits\n    more: *c\n")
    _fails_in_one_line(["grid", "--config", str(loop), "--out", str(tmp_path / "r.jsonl"), "--dry-run"],
                       capsys, "recursive alias")


@pytest.mark.parametrize("seeds, defence, cells", [
    (1000, "{defense: prune, sparsity: %s}" % [i / 101 for i in range(100)], 10**5),
    (10**4, "{defense: minmax, lam: %s, k_steps: %s}" % (list(range(1000)), list(range(1, 101))), 10**9),
])
def test_a_grid_of_too_many_cells_is_answered_at_once(seeds, defence, cells, tmp_path, capsys) -> None:
    grid = tmp_path / "big.yaml"
    grid.write_text(f"seeds: {list(range(seeds))}\ncells:\n  - arch: lenet5\n    dataset: digits\n"
                    f"    defenses:\n      - {defence}\n")
    with _deadline(60):
        line = _fails_in_one_line(["grid", "--config", str(grid), "--out", str(tmp_path / "r.jsonl"),
                                   "--dry-run"], capsys)
    assert f"expands to {cells} cells" in line and f"limit of {MAX_GRID_CELLS}:" in line, line


def test_grid_files_of_every_junk_kind(tmp_path, capsys) -> None:
    out = str(tmp_path / "r.jsonl")
    for name, path in _junk_files(tmp_path).items():
        if name == "missing.json":
            continue
        _fails_in_one_line(["grid", "--config", str(path), "--out", out, "--dry-run"], capsys)
    wrong_types = ["cells: 3\n", "cells: {arch: lenet5}\n", "seeds: [a]\ncells: [{arch: lenet5, dataset: digits}]\n",
                   "cells: [{arch: [lenet5], dataset: digits}]\n", "cells: [{arch: lenet5, dataset: digits, defenses: none}]\n",
                   "cells: [{arch: lenet5, dataset: digits, defenses: [{defense: prune, sparsity_spec: 3}]}]\n",
                   "- cells\n", "!!python/object:os.system {}\n"]
    for i, text in enumerate(wrong_types):
        grid = tmp_path / f"wrong-{i}.yaml"
        grid.write_text(text)
        _fails_in_one_line(["grid", "--config", str(grid), "--out", out, "--dry-run"], capsys)


def test_a_zoo_of_a_billion_models_is_refused_naming_the_limit(capsys, no_training) -> None:
    _fails_in_one_line([*ZOO, "--models", "1000000000"], capsys, str(MAX_ZOO_MODELS))
    _fails_in_one_line([*ZOO, "--models", str(MAX_ZOO_MODELS + 2), "--dry-run"], capsys, str(MAX_ZOO_MODELS))
    status, lines = _status([*ZOO, "--models", "8", "--dry-run"], capsys)
    assert status == 0, lines


@pytest.mark.parametrize("value", ["²", "١", "2.5", "-1", "1e3", "0x10", "1001"])
def test_junk_smoke_caps_fail_in_one_line(value, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MCMIA_SMOKE", value)
    _fails_in_one_line([*RUN, "--dry-run"], capsys, "MCMIA_SMOKE")


# --------------------------------------------------------------------------- tools


def _tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("argv, env", [
    (["tools/paper_smoke.py", "--out", "/proc/mcmia/smoke.jsonl"], None),
    (["tools/paper_smoke.py", "--out", "nodir/"], None),
    (["tools/paper_smoke.py", "--out", "/tmp/mcmia-smoke.jsonl"], {"MCMIA_SMOKE": "²"}),
    (["tools/paper_smoke.py", "--out", "/tmp/mcmia-smoke.jsonl", "--imagenet-root", "/nonexistent"], None),
    (["tools/execute_notebooks.py", "/nonexistent.ipynb"], None),
    (["tools/execute_notebooks.py", "tools/paper_smoke.py"], None),
    (["tools/set_repository.py", "https://github.com/a/b", "--root", "/nonexistent"], None),
    (["tools/dp_equal_utility.py", "--out", "/proc/mcmia/dp.json"], None),
])
def test_tools_answer_bad_inputs_in_one_line(argv, env) -> None:
    done = _tool(*argv, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


def test_imagenet_roots_are_checked_at_dry_run(tmp_path, capsys, no_training) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["run", "--arch", "lenet5", "--dataset", "imagenet", "--imagenet-size", "8", "--dry-run"]
    _fails_in_one_line([*base, "--imagenet-root", str(tmp_path / "missing")], capsys, "not a folder")
    _fails_in_one_line([*base, "--imagenet-root", str(empty)], capsys, "no images")
    (empty / "train" / "n0").mkdir(parents=True)
    assert main([*base, "--imagenet-root", str(empty)]) == 0
    grid = tmp_path / "grid.yaml"
    grid.write_text("cells:\n  - {arch: lenet5, dataset: imagenet, imagenet_size: 8, "
                    f"imagenet_root: {json.dumps(str(tmp_path / 'missing'))}}}\n")
    out = str(tmp_path / "r.jsonl")
    _fails_in_one_line(["grid", "--config", str(grid), "--out", out, "--dry-run"], capsys, "imagenet_root")
    # the commands for another machine may name its root
    assert main(["grid", "--config", str(grid), "--out", out, "--print-commands"]) == 0


def test_the_library_reader_of_sparsity_specs_refuses_binary_files(tmp_path) -> None:
    """What a notebook calls (no command line in between): a one-line UserError, not a
    ``UnicodeDecodeError``."""
    from mcmia_helpers.defences.pruning import load_sparsity_spec
    from mcmia_helpers.errors import UserError

    path = tmp_path / "spec.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="not UTF-8"):
        load_sparsity_spec(path)
