"""Pages that read cleanly, checked on the notebooks themselves (the browser test checks the
built pages): setup cells collapse to one line, code fits the page, tables are a paper's tables,
figures have at most two panels a row."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from book_files import ROOT, chapter_notebooks

RUFF = Path(sys.executable).with_name("ruff")
PAGE_COLUMNS = 88  # what the book theme shows without horizontal scrolling
#: The last line of a cell that shows a DataFrame as it is: a bare name, ``.round(3)``, ``.T``...
RAW_TABLE = re.compile(r"(\.round\(\d\)|\.T|\.set_index\(.*\)|\.loc\[.*\])$|^[A-Za-z_]\w*$")


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _code(path: Path) -> list[dict]:
    return [c for c in _cells(path) if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_setup_cell_is_collapsed_with_a_one_line_summary(path: Path) -> None:
    setup = _code(path)[0]
    assert "REPOSITORY = " in "".join(setup["source"]), "the first code cell is not the setup cell"
    assert "hide-input" in setup["metadata"].get("tags", [])
    prompt = setup["metadata"].get("mystnb", {}).get("code_prompt_show", "")
    assert prompt.startswith("Setup: installs the package where it is missing"), prompt


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_code_lines_fit_the_page(path: Path) -> None:
    long = [line for cell in _code(path) for line in "".join(cell["source"]).splitlines()
            if len(line) > PAGE_COLUMNS]
    assert not long, f"{len(long)} code line(s) longer than {PAGE_COLUMNS}: {long[:3]}"


def test_notebooks_are_formatted() -> None:
    result = subprocess.run([str(RUFF), "format", "--check", *map(str, chapter_notebooks())],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_tables_are_paper_tables(path: Path) -> None:
    """Every table a chapter shows goes through ``mh.notebook.paper_table`` (or
    ``attack_table``): a pandas DataFrame dump (index numbers, raw column names, fractions)
    is never the last expression of a cell, and no stored output is one."""
    for cell in _code(path):
        source = "".join(cell["source"]).rstrip()
        last = source.splitlines()[-1] if source else ""
        assert not RAW_TABLE.search(last), f"{path.stem}: shows a raw table: {last}"
        for out in cell.get("outputs", []):
            html = "".join(out.get("data", {}).get("text/html", ""))
            assert 'class="dataframe"' not in html, f"{path.stem}: a stored DataFrame dump"


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_figures_have_at_most_two_panels_a_row(path: Path) -> None:
    for cell in _code(path):
        for match in re.finditer(r"plt\.subplots\(\s*(\d+)\s*,\s*(\d+)", "".join(cell["source"])):
            assert int(match.group(2)) <= 2, f"{path.stem}: {match.group(0)}"


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_stored_outputs_hold_figures(path: Path) -> None:
    """Every chapter draws: its stored outputs hold PNG figures (a kernel run with a non-inline
    matplotlib backend stores none, and the built book would silently lose them)."""
    figures = sum("image/png" in out.get("data", {}) for cell in _code(path)
                  for out in cell.get("outputs", []))
    assert figures > 0, f"{path.stem}: no stored figure"


def test_glue_stores_numpy_scalars_as_numbers_myst_nb_can_format(monkeypatch) -> None:
    """``np.float64(0.65)`` glued as is reaches the page as the text ``np.float64(0.65)``, which
    myst-nb cannot format (chapter 2's AUC intervals did, with a build warning each)."""
    import numpy as np
    import myst_nb

    from mcmia_helpers import notebook

    seen = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: seen.update({name: value}))
    notebook.glue("x", np.float64(0.65))
    notebook.glue("n", np.int64(3))
    notebook.glue("s", "text")
    assert type(seen["x"]) is float and seen["x"] == 0.65 and repr(seen["x"]) == "0.65"
    assert type(seen["n"]) is int and seen["s"] == "text"
