"""Grid files are checked against a JSON schema (jsonschema): unknown keys, wrong types, values
out of bounds and empty expansions are one-line errors naming the key and its line."""

from __future__ import annotations

import pytest

from mcmia_helpers import grid as grid_runner
from mcmia_helpers.cli import main
from mcmia_helpers.errors import UserError

BASE = """scale: ci
seeds: [0]
attacks: [loss]
cells:
  - arch: lenet5
    dataset: digits
    defenses:
      - {defense: none}
"""


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """A cell that starts running fails the test at once: every error must come first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a cell started before the grid file was checked")

    monkeypatch.setattr(grid_runner, "run_experiment", forbidden)


def _grid_fails(text: str | bytes, tmp_path, capsys) -> str:
    config = tmp_path / "grid.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        status = main(["grid", "--config", str(config), "--out", str(tmp_path / "r.jsonl")])
    except SystemExit as stop:
        status = stop.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("old, new, fragments", [
    ("seeds: [0]", "seeds: 3", ["line 2", "seeds", "list"]),
    ("seeds: [0]", "seeds: [abc]", ["line 2", "seeds[0]", "integer"]),
    ("seeds: [0]", "seeds: [0.7]", ["line 2", "seeds[0]", "integer"]),
    ("seeds: [0]", "seeds: [-1]", ["line 2", "seeds[0]"]),
    ("seeds: [0]", "seeds: [2147483648]", ["line 2", "seeds[0]", "maximum"]),
    ("seeds: [0]", "seeds: []", ["line 2", "seeds", "empty"]),
    ("seeds: [0]", "seed: [5]", ["line 2", "unknown key 'seed'"]),
    ("attacks: [loss]", "attack: [loss]", ["line 3", "unknown key 'attack'"]),
    ("attacks: [loss]", "attacks: loss", ["line 3", "attacks", "list"]),
    ("attacks: [loss]", "attacks: [los]", ["line 3", "attacks[0]", "'los'"]),
    ("  - arch: lenet5\n", "  - arch: lenet5\n    archh: x\n", ["line 6", "unknown key 'archh'"]),
    ("  - arch: lenet5\n    dataset: digits", "  - dataset: digits", ["line 5", "cells[0]", "'arch'"]),
    ("    defenses:\n      - {defense: none}\n", "    defenses: none\n", ["line 7", "defenses", "list"]),
    ("{defense: none}", "{defense: dp, lam: 3}", ["line 8", "'lam'", "epsilon"]),
    ("{defense: none}", "{defense: minmax, lam: 1.0e+300}", ["line 8", "lam", "1000"]),
    ("{defense: none}", "{defense: minmax, lam: .nan}", ["line 8", "lam", "finite"]),
    ("{defense: none}", "{defense: prune, sparsity: []}", ["line 8", "sparsity", "empty"]),
    ("{defense: none}", "{defense: magic}", ["line 8", "defense", "'magic'"]),
    ("scale: ci", "scale: huge", ["line 1", "scale", "'huge'"]),
])
def test_grid_mistakes_name_the_key_and_line(old, new, fragments, tmp_path, capsys) -> None:
    assert old in BASE
    line = _grid_fails(BASE.replace(old, new), tmp_path, capsys)
    for fragment in fragments:
        assert fragment in line, line


def test_empty_cells_and_empty_files_are_errors(tmp_path, capsys) -> None:
    assert "empty" in _grid_fails("cells: []\n", tmp_path, capsys)
    assert "cells" in _grid_fails("", tmp_path, capsys)
    assert "'cells' is missing" in _grid_fails("scale: ci\n", tmp_path, capsys)


def test_non_utf8_grid_file_is_an_error(tmp_path, capsys) -> None:
    line = _grid_fails(BASE.encode().replace(b"digits", b"dig\xffits"), tmp_path, capsys)
    assert "UTF-8" in line and "line 6" in line


def test_invalid_yaml_names_the_line(tmp_path, capsys) -> None:
    line = _grid_fails(BASE + "  - {arch: [\n", tmp_path, capsys)
    assert "not valid YAML" in line


def test_only_that_matches_nothing_is_an_error(tmp_path, capsys) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text(BASE)
    with pytest.raises(UserError, match="matches none"):
        grid_runner.run_grid(grid_runner.load_grid(config), tmp_path / "r.jsonl", only="resnet")


@pytest.mark.parametrize("name", grid_runner.bundled_names())
def test_shipped_grids_pass_the_schema(name) -> None:
    assert list(grid_runner.expand(grid_runner.load_grid(name)))
