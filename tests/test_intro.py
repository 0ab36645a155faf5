"""The intro opens with the answer, pasted from the chapters, and a computed data table
(issue 28, item 3; tools/render_intro.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from book_files import ROOT

spec = importlib.util.spec_from_file_location("render_intro", ROOT / "tools" / "render_intro.py")
render_intro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_intro)

INTRO = ROOT / "book" / "intro.md"
BOX = ":::{admonition} What we found"


def _notebook(path, glued: dict) -> None:
    outputs = [{"output_type": "display_data", "metadata": {"scrapbook": {"name": k, "mime_prefix":
                "application/papermill.record/"}}, "data": {"application/papermill.record/text/plain": v}}
               for k, v in glued.items()]
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "metadata": {}, "source": "",
                                           "outputs": outputs, "execution_count": 1}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


# ----------------------------------------------------------------------------- the box


def test_every_value_the_intro_pastes_is_glued_by_its_chapter() -> None:
    """Each ``{glue:text}`chapter.ipynb::key:fmt``` of the intro names a key that the chapter's
    stored outputs glue, in a form its format prints: a missing one would leave a hole in the box."""
    problems = render_intro.missing_glue(INTRO)
    assert not problems, "\n".join(problems)


def test_a_missing_key_is_one_line_naming_key_and_chapter(tmp_path) -> None:
    book = tmp_path / "book"
    book.mkdir()
    _notebook(book / "06_zoo.ipynb", {"ch6_answer": "'fewer leaks'", "ch6_change": "0.5"})
    intro = book / "intro.md"
    intro.write_text("{glue:text}`06_zoo.ipynb::ch6_answer:s` {glue:text}`06_zoo.ipynb::ch6_change:+.2f`\n"
                     "{glue:text}`06_zoo.ipynb::ch6_answer_data:s`\n")
    problems = render_intro.missing_glue(intro)
    assert len(problems) == 1 and "\n" not in problems[0]
    assert "'ch6_answer_data'" in problems[0] and "06_zoo" in problems[0]
    # a text pasted as a number, a key without a format, a chapter that does not exist
    intro.write_text("{glue:text}`06_zoo.ipynb::ch6_answer:.2f` {glue:text}`06_zoo.ipynb::ch6_change`"
                     " {glue:text}`07_gone.ipynb::ch7_x:s` {glue:text}`local_key`\n")
    problems = render_intro.missing_glue(intro)
    assert len(problems) == 3, problems
    assert "as a number" in problems[0] and "without a format" in problems[1] and "07_gone" in problems[2]


def test_the_intro_opens_with_a_short_answer_box() -> None:
    text = INTRO.read_text()
    assert BOX in text, "the intro has no 'What we found' box"
    head = text.split(BOX, 1)[0]
    assert "\n## " not in head, "the 'What we found' box must come before the first section"
    box = text.split(BOX, 1)[1].split("\n:::\n", 1)[0]
    assert "13.6" in box and "10-15" in box, "the box states the paper's claim"
    assert len(box.strip().splitlines()) <= 25, "the box is for a 20-second read: keep it short"
    refs = render_intro.glue_refs(box)
    assert refs, "the box's numbers are pasted from the chapters, never typed"
    assert any("scale" in key or "data" in key for _, key, _ in refs), "the box names data and scale"


def test_box_numbers_are_not_typed() -> None:
    """Apart from the paper's claim, no number in the box's table is written by hand."""
    import re

    box = INTRO.read_text().split(BOX, 1)[1].split("\n:::\n", 1)[0]
    table = [line for line in box.splitlines() if line.startswith("|") and "---" not in line]
    for line in table[1:]:
        cells = re.sub(r"\{glue:text\}`[^`]+`", "", line).split("|")[2:]
        assert not re.search(r"\d", "".join(cells)), f"a typed number in the box: {line}"


# ----------------------------------------------------------------------------- the data table


def test_committed_data_table_is_the_rendered_one() -> None:
    committed = render_intro.committed_data_table(INTRO)
    assert committed == render_intro.render_data_table().strip(), (
        "book/intro.md: the data table is out of date: run python tools/render_intro.py")


def test_data_table_names_every_subset_and_stand_in() -> None:
    rows = render_intro.table_rows()
    chapters = {c.strip() for row in rows for c in row[0].split(",")}
    for path in render_intro.chapters():
        assert f"{{doc}}`{path.stem}`" in chapters, f"{path.stem} is not in the data table"
    for _, _, arch, data, _ in rows:
        if data.startswith("MNIST"):
            assert "**subset**" in data
        if "CIFAR" in data or "for MNIST" in data:
            assert "**stand-in**" in data, data
    members = {row[4] for row in rows}
    assert {"1,000", "500", "2,000"} <= members  # chapters 0-4, 5 and 6 train on different sizes


def test_data_used_follows_the_registry() -> None:
    mnist = render_intro.data_used("lenet5", "mnist", "fashion-mnist", 6000)
    assert mnist.startswith("MNIST, **subset**") and "10,000" in mnist
    too_big = render_intro.data_used("lenet5", "mnist", "fashion-mnist", 20000)
    assert too_big.startswith("Fashion-MNIST, **stand-in** for MNIST") and "20,000" in too_big
    cifar = render_intro.data_used("vgg16", "cifar10", "fashion-mnist", 3000)
    assert cifar.startswith("Fashion-MNIST padded to 3x32x32, **stand-in** for CIFAR-10")
    assert render_intro.data_used("lenet5", "fashion-mnist", None, 7000) == "Fashion-MNIST"


def test_pairs_read_every_family_of_a_parameters_cell() -> None:
    params = {"SCALE": "book", "ARCH": "lenet5", "DATASET": ["mnist", "fashion-mnist"],
              "CNN_ARCH": "vgg16", "CNN_DATASET": "cifar10", "STANDIN": "fashion-mnist", "SEED": 0}
    assert render_intro._pairs(params) == [("lenet5", "mnist", "fashion-mnist"),
                                           ("lenet5", "fashion-mnist", "fashion-mnist"),
                                           ("vgg16", "cifar10", "fashion-mnist")]
    families = {"SCALE": "book", "FAMILIES": {"a": ("lenet5", "mnist"), "b": ("vgg16", "cifar10")},
                "STANDIN": "fashion-mnist"}
    assert render_intro._pairs(families) == [("lenet5", "mnist", "fashion-mnist"),
                                             ("vgg16", "cifar10", "fashion-mnist")]


def test_update_intro_rewrites_only_between_markers(tmp_path) -> None:
    root = tmp_path
    (root / "book").mkdir()
    for name in ("_toc.yml",):
        (root / name).write_text((ROOT / name).read_text())
    for path in render_intro.chapters():
        (root / path.relative_to(ROOT)).write_text(path.read_text())
    intro = root / "book" / "intro.md"
    intro.write_text(f"before\n{render_intro.START}\nold\n{render_intro.END}\nafter\n")
    render_intro.update_intro(intro)
    text = intro.read_text()
    assert text.startswith("before\n") and text.endswith(f"{render_intro.END}\nafter\n")
    assert "old" not in text and "| members per model |" in text
    intro.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        render_intro.update_intro(intro)


def test_the_glue_directive_of_the_box_is_checked_too(tmp_path) -> None:
    book = tmp_path / "book"
    book.mkdir()
    _notebook(book / "06_zoo.ipynb", {"ch6_answer": "'fewer leaks'"})
    intro = book / "intro.md"
    intro.write_text("```{glue} ch6_box\n:doc: 06_zoo.ipynb\n```\n")
    assert render_intro.glue_refs(intro.read_text()) == [("06_zoo.ipynb", "ch6_box", None)]
    problems = render_intro.missing_glue(intro)
    assert len(problems) == 1 and "'ch6_box'" in problems[0]


def test_a_grid_architecture_in_several_cells_is_one_row_with_all_its_defences() -> None:
    """Chapter 5's grid lists LeNet-5 twice (pruning; Min-Max and pruning with Min-Max): the
    data table counts its targets once, over every defence of both cells."""
    from mcmia_helpers import grid as grid_module

    grid = grid_module.load_grid("book")
    defences = sum(len(c["defenses"]) for c in grid["cells"] if c["arch"] == "lenet5")
    seeds = len(grid["seeds"])
    rows = [r for r in render_intro.table_rows() if "05_four_architectures" in r[0]
            and "LeNet-5" in r[2]]
    assert len(rows) == 1, rows
    assert f"{defences * seeds} targets per architecture ({seeds} seeds x {defences} defences)" \
        in rows[0][1]
    assert "without and with the target's defence" in rows[0][1]  # the grid's *_aware attacks
