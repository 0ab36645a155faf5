"""The stored book, read statically (nothing runs): its outputs are the ``book`` scale, every
number glued into the prose is produced by a ``glue()`` call of the same chapter and is present
in its stored outputs, and the stored grid records cover the shipped book grid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from book_files import ROOT, chapter_notebooks
from mcmia_helpers import grid as grid_runner

CHAPTERS = chapter_notebooks()
#: ``{glue}`name```, ``{glue:text}`name:.1%```, ``{glue:figure}`name``` ... in markdown.
GLUE_ROLE = re.compile(r"\{glue(?::[a-z]+)?\}`([^`]+)`")
GLUE_CALL = re.compile(r"""\bglue\(\s*(f?)["']([^"']+)["']""")
#: What a chapter prints about its scale: scale_note's "Scale 'book'; ..." or "... at scale 'book'".
SCALE_MENTION = re.compile(r"[Ss]cale '(\w+)'")


def _notebook(path: Path):
    return nbformat.read(path, as_version=4)


def _output_texts(cell) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            texts.append(output.get("text", ""))
        else:
            data = output.get("data", {})
            texts += ["".join(data.get(kind, "")) for kind in ("text/plain", "text/html")]
    return texts


def _prose_glue_names(nb) -> set[str]:
    return {m.split(":")[0] for c in nb.cells if c.cell_type == "markdown"
            for m in GLUE_ROLE.findall(c.source)}


def _glue_calls(nb) -> tuple[set[str], list[str]]:
    """Names glued with a literal name, and the f-string templates (checked by pattern)."""
    names, templates = set(), []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for is_f, name in GLUE_CALL.findall(cell.source):
                (templates.append(name) if is_f else names.add(name))
    return names, templates


def _stored_glue_names(nb) -> set[str]:
    return {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}


def test_the_book_has_its_chapters() -> None:
    assert len(CHAPTERS) >= 7 and all(p.exists() for p in CHAPTERS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_outputs_are_the_book_scale(path: Path) -> None:
    """Every stored statement of the scale says ``book``: outputs executed at ``ci`` (the tests)
    or ``paper`` must never be committed as the book's."""
    nb = _notebook(path)
    mentions = [m for c in nb.cells if c.cell_type == "code" for text in _output_texts(c)
                for m in SCALE_MENTION.findall(text)]
    assert mentions, f"{path.name}: no stored output names its scale (scale_note)"
    assert set(mentions) == {"book"}, f"{path.name}: stored outputs at scale(s) {sorted(set(mentions))}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: a stored output is an error"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_glued_name_in_the_prose_is_produced_by_the_chapter(path: Path) -> None:
    nb = _notebook(path)
    used = _prose_glue_names(nb)
    produced, templates = _glue_calls(nb)
    patterns = [re.compile(re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(t)) + r"\Z") for t in templates]
    missing = {n for n in used if n not in produced and not any(p.match(n) for p in patterns)}
    assert not missing, f"{path.name}: the prose uses glue names no glue() call makes: {sorted(missing)}"
    stored = _stored_glue_names(nb)
    assert not used - stored, f"{path.name}: glued in the prose but not in the stored outputs: {sorted(used - stored)}"


def test_glue_names_belong_to_one_chapter() -> None:
    """Each chapter glues under its own prefix (``ch4_...``), so no page can pick up a number of
    another chapter by name."""
    owner: dict[str, str] = {}
    for path in CHAPTERS:
        nb = _notebook(path)
        for name in _glue_calls(nb)[0] | _prose_glue_names(nb):
            assert owner.setdefault(name, path.stem) == path.stem, (name, owner[name], path.stem)


def test_stored_results_cover_the_book_grid() -> None:
    """``results/book.jsonl`` (what chapter 5 reads at book scale) holds one record of every
    cell of the shipped book grid, each at the book scale."""
    grid = grid_runner.load_grid(grid_runner.config_path("book"))
    wanted = [grid_runner.cell_id(s) for s in grid_runner.expand(grid)]
    lines = (ROOT / "results" / "book.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    have = [grid_runner.record_cell_id(r) for r in records]
    assert not set(wanted) - set(have), f"cells without a stored record: {sorted(set(wanted) - set(have))}"
    stored = [c for c in have if c in set(wanted)]
    assert len(stored) == len(set(stored)), "a cell is stored twice"
    assert all(r["scale"] == "book" for r in records)
