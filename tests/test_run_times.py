"""The intro's run-time table is generated from measured times (tools/execute_notebooks.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from book_files import ROOT, chapter_notebooks

spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "tools" / "execute_notebooks.py")
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)


def test_record_and_render() -> None:
    times = execute_notebooks.record_time({}, "book", "01_x", 125.0)
    times = execute_notebooks.record_time(times, "ci", "01_x", 12.34)
    times = execute_notebooks.record_time(times, "ci", "02_y", 40)
    assert times["ci"]["01_x"]["seconds"] == 12.3
    table = execute_notebooks.render_table(times)
    assert "| {doc}`01_x` | 12 s | 2 min |" in table
    assert "| {doc}`02_y` | 40 s | not measured |" in table
    assert "except where a note" not in table and "(1)" not in table
    assert "| whole book (the sum) | 52 s | — |" in table  # book scale: 02_y not measured
    full = execute_notebooks.record_time(times, "book", "02_y", 3600)
    assert "| whole book (the sum) | 52 s | 62 min |" in execute_notebooks.render_table(full)
    noted = execute_notebooks.record_time(times, "book", "02_y", 600, note="sum of two runs")
    table = execute_notebooks.render_table(noted)
    assert "| {doc}`02_y` | 40 s | 10 min (1) |" in table
    assert table.endswith("(1) 02_y at `book` scale: sum of two runs")


def test_update_intro_rewrites_only_between_markers(tmp_path) -> None:
    intro = tmp_path / "intro.md"
    start, end = execute_notebooks.START, execute_notebooks.END
    intro.write_text(f"before\n{start}\nold table\n{end}\nafter\n")
    times = execute_notebooks.record_time({}, "book", "00_a", 3.0)
    execute_notebooks.update_intro(intro, times)
    text = intro.read_text()
    assert text.startswith("before\n") and text.endswith(f"{end}\nafter\n")
    assert "old table" not in text and "| {doc}`00_a` | not measured | 3 s |" in text
    intro.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="markers"):
        execute_notebooks.update_intro(intro, times)


def test_committed_intro_shows_the_measured_times() -> None:
    """Every chapter of the table of contents has a measured book-scale time, and the intro's
    table is exactly the one rendered from book/run_times.json (no hand-typed times)."""
    times = json.loads((ROOT / "book" / "run_times.json").read_text())
    for chapter in (path.stem for path in chapter_notebooks()):
        assert chapter in times["book"], f"{chapter} has no measured book-scale run time"
    intro = (ROOT / "book" / "intro.md").read_text()
    inside = intro.split(execute_notebooks.START, 1)[1].split(execute_notebooks.END, 1)[0]
    assert inside.strip() == execute_notebooks.render_table(times).strip()
