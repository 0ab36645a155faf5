"""The book's Colab set-up: one repository address in ``_config.yml``, copied into every chapter's
setup cell by ``tools/set_repository.py``; the setup cell itself; and figure captions.

The tool is run on copies of the book's files in a temporary folder (``--root``), never on the
repository itself.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import nbformat
import pytest
import yaml

from book_files import ROOT
from book_files import chapter_notebooks as _chapters

TOOL = ROOT / "tools" / "set_repository.py"
URL = "https://github.com/example-owner/mcmia-book"


def _setup_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and re.search(r"^REPOSITORY = ", c.source, re.M)]


def _constants(source: str) -> dict[str, object]:
    """The literal values of the setup cell's REPOSITORY and BRANCH assignments."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("REPOSITORY", "BRANCH"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture()
def book_copy(tmp_path: Path) -> Path:
    """_config.yml, _toc.yml and the chapter notebooks, copied; the first chapter gets stored
    outputs (a stream, a figure, a table) so that the test can see whether the tool keeps them."""
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    for path in _chapters():
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    first = _chapters(tmp_path)[0]
    nb = nbformat.read(first, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [
            nbformat.v4.new_output("stream", name="stdout", text=f"line {i}\n"),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
            nbformat.v4.new_output("execute_result", data={"text/html": "<table></table>"}, execution_count=i + 1),
        ]
    nbformat.write(nb, first)
    return tmp_path


# --- the setup cell of every chapter -------------------------------------------------------------

def test_every_chapter_has_one_setup_cell_with_the_configured_address() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    chapters = _chapters()
    assert chapters, "_toc.yml lists no chapter notebooks"
    for path in chapters:
        nb = nbformat.read(path, as_version=4)
        setup = _setup_cells(nb)
        assert len(setup) == 1, f"{path.name}: {len(setup)} setup cells (expected 1)"
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert setup[0] is first_code, f"{path.name}: the setup cell is not the first code cell"
        assert _constants(setup[0].source) == {"REPOSITORY": config["repository"]["url"],
                                               "BRANCH": config["repository"]["branch"]}, path.name
        assert "mh.training.get_device()" in setup[0].source, f"{path.name}: the setup cell picks no device"


def _run_setup_cell(source: str, monkeypatch: pytest.MonkeyPatch, installed: bool) -> tuple[list, str]:
    """Execute a setup cell as a kernel would, with the package reported missing unless
    ``installed``; pip is replaced by a recorder. Returns (pip calls, printed text)."""
    calls = []
    real_find_spec = importlib.util.find_spec
    out = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stdout(out), matplotlib.rc_context():
        if not installed:
            patch.setattr(importlib.util, "find_spec",
                          lambda name, *a: None if name == "mcmia_helpers" else real_find_spec(name, *a))
        patch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)))
        exec(compile(source, "<setup cell>", "exec"), {"__name__": "__main__"})
    return calls, out.getvalue()


def test_setup_cell_without_address_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    source = _setup_cells(nbformat.read(_chapters()[0], as_version=4))[0].source
    source = re.sub(r'^REPOSITORY = "[^"]*"', 'REPOSITORY = ""', source, flags=re.M)
    with pytest.raises(ModuleNotFoundError) as info:
        _run_setup_cell(source, monkeypatch, installed=False)
    message = str(info.value)
    assert "\n" not in message and "REPOSITORY" in message and "pip install -e ." in message


def test_setup_cell_installs_from_the_address_and_reports_the_device(
        monkeypatch: pytest.MonkeyPatch, book_copy: Path) -> None:
    assert _tool(URL, "--branch", "dev", "--root", str(book_copy)).returncode == 0
    source = _setup_cells(nbformat.read(_chapters(book_copy)[1], as_version=4))[0].source
    calls, printed = _run_setup_cell(source, monkeypatch, installed=False)
    assert calls == [([sys.executable, "-m", "pip", "install", "-q", f"git+{URL}@dev"], {"check": True})]
    assert re.fullmatch(r"device: (cpu|mps|cuda \(.+\))\n", printed), printed
    assert not re.search(r"/(work|tmp|root|home|usr|content)/", printed), "a machine path in the output"
    # Where the package is installed (CI, a clone), nothing is installed.
    calls, _ = _run_setup_cell(source, monkeypatch, installed=True)
    assert calls == []


# --- tools/set_repository.py ---------------------------------------------------------------------

def test_tool_sets_the_address_everywhere_and_keeps_outputs(book_copy: Path) -> None:
    config_before = yaml.safe_load((book_copy / "_config.yml").read_text())
    notebooks = _chapters(book_copy)
    before = {p: json.loads(p.read_text()) for p in notebooks}

    result = _tool(URL + ".git/", "--root", str(book_copy))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""

    text = (book_copy / "_config.yml").read_text()
    config = yaml.safe_load(text)
    assert config["repository"]["url"] == URL  # ".git" and the trailing slash are dropped
    assert config["repository"]["branch"] == "main"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["html"]["use_repository_button"] is True
    expected = copy.deepcopy(config_before)
    expected["repository"].update(url=URL, branch="main")
    expected["launch_buttons"]["colab_url"] = "https://colab.research.google.com"
    expected["html"]["use_repository_button"] = True
    assert config == expected, "the tool changed more of _config.yml than the address and buttons"
    assert "python tools/set_repository.py" in text, "the comments of _config.yml were lost"

    for path in notebooks:
        after = json.loads(path.read_text())
        want = copy.deepcopy(before[path])
        setup = next(c for c in want["cells"] if any(line.startswith("REPOSITORY = ") for line in c["source"]))
        setup["source"] = [re.sub(r'^REPOSITORY = "[^"]*"', f'REPOSITORY = "{URL}"', line) for line in setup["source"]]
        assert after == want, f"{path.name}: the tool changed more than the REPOSITORY line"
        assert _constants("".join(setup["source"]))["REPOSITORY"] == URL
    first = json.loads(notebooks[0].read_text())
    assert sum(len(c.get("outputs", [])) for c in first["cells"]) > 0, "the stored outputs were lost"


def test_tool_output_is_what_jupyter_book_turns_into_a_colab_button(book_copy: Path) -> None:
    from jupyter_book.config import get_final_config

    def theme(root: Path) -> dict:
        config, *_ = get_final_config(user_yaml=root / "_config.yml", sourcedir=root, raise_on_invalid=True,
                                      cli_config={"latex_individualpages": False})
        return config["html_theme_options"]

    unset = theme(book_copy)  # as committed: no address, so no launch button and no stray default
    assert unset["repository_url"] == "" and not unset["launch_buttons"]["colab_url"]
    assert not unset.get("use_repository_button")
    assert _tool(URL, "--branch", "gh-pages", "--root", str(book_copy)).returncode == 0
    set_ = theme(book_copy)
    assert (set_["repository_url"], set_["repository_branch"]) == (URL, "gh-pages")
    assert set_["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert set_["path_to_docs"] == "" and set_["use_repository_button"] is True


@pytest.mark.parametrize("bad", ["http://github.com/owner/repo", "https://gitlab.com/owner/repo",
                                 "https://github.com/owner", "git@github.com:owner/repo.git",
                                 "https://github.com/owner/repo/tree/main", "https://github.com/-x/repo",
                                 "https://github.com/owner/.."])
def test_tool_rejects_a_malformed_address_and_changes_nothing(bad: str, book_copy: Path) -> None:
    files = [book_copy / "_config.yml", *_chapters(book_copy)]
    before = {p: p.read_bytes() for p in files}
    result = _tool(bad, "--root", str(book_copy))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "https://github.com/OWNER/REPO" in result.stderr
    assert result.stdout == ""
    assert {p: p.read_bytes() for p in files} == before


def test_tool_rejects_a_bad_branch_and_a_notebook_without_setup_cell(book_copy: Path) -> None:
    result = _tool(URL, "--branch=-rf", "--root", str(book_copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("set_repository.py: error: --branch '-rf'")
    config_before = (book_copy / "_config.yml").read_bytes()
    last = _chapters(book_copy)[-1]
    nb = nbformat.read(last, as_version=4)
    _setup_cells(nb)[0].source = "import mcmia_helpers as mh"
    nbformat.write(nb, last)
    result = _tool(URL, "--root", str(book_copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last.name in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (book_copy / "_config.yml").read_bytes() == config_before, "a failed run must change nothing"


# --- figure captions -----------------------------------------------------------------------------

def test_every_stored_figure_has_a_caption_of_its_own() -> None:
    """A figure output gets its caption from the cell's ``mystnb.figure`` metadata; myst-nb wraps
    every display output of that cell in the figure, so a captioned cell holds exactly one."""
    names = []
    for path in _chapters():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            figure = cell.metadata.get("mystnb", {}).get("figure")
            displays = [o for o in cell.get("outputs", []) if o.output_type in ("display_data", "execute_result")]
            if any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}) for o in displays):
                assert figure and figure.get("caption"), f"{path.name} {cell.id}: a figure without a caption"
            if figure:
                assert len(figure["caption"].split(". ")) <= 3 and figure["caption"].endswith("."), (path.name, cell.id)
                assert re.fullmatch(r"fig-[a-z0-9-]+", figure["name"]), (path.name, cell.id)
                assert len(displays) <= 1, f"{path.name} {cell.id}: a captioned cell with {len(displays)} outputs"
                names.append(figure["name"])
    assert names, "no chapter has a captioned figure"
    assert len(names) == len(set(names)), "figure names must be unique across the book"
