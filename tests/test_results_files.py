"""Results files: concurrent appends lose nothing; damaged lines are reported once and set aside,
so neither the grid nor the readers (chapter 5, the explorer) ever crash on them."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from mcmia_helpers import grid as grid_runner
from mcmia_helpers.io import append_jsonl, read_jsonl

def _append_many(path: str, name: str, n: int, start) -> None:
    start.wait()  # both writers begin together
    for i in range(n):
        append_jsonl(path, {"writer": name, "i": i, "pad": "x" * 2000})


def test_two_processes_appending_at_once_keep_every_record(tmp_path) -> None:
    """Two grid runs sharing one --out: the old read-and-rewrite append kept 173 of 300."""
    out = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")  # no re-import of torch in the children
    start = ctx.Event()
    writers = [ctx.Process(target=_append_many, args=(str(out), name, 150, start)) for name in ("a", "b")]
    for w in writers:
        w.start()
    start.set()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    records = read_jsonl(out)
    assert len(records) == 300
    for name in ("a", "b"):
        assert sorted(r["i"] for r in records if r["writer"] == name) == list(range(150))


def _damaged_file(path: Path) -> None:
    path.write_bytes(b'{"cell_id": "a", "v": 1}\n'
                     b'{"cell_id": "b", "v": \n'  # torn by a crash
                     b'[1, 2, 3]\n'  # JSON, but not an object
                     b'\xff\xfe not utf-8\n'
                     b'\n'
                     b'{"cell_id": "c", "v": 3}\n')


def test_damaged_lines_are_reported_once_and_set_aside(tmp_path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    _damaged_file(out)
    assert [r["cell_id"] for r in grid_runner.read_records(out)] == ["a", "c"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2, 3, 4" in err[0] and "results.jsonl.rejected" in err[0], err
    assert (tmp_path / "results.jsonl.rejected").read_bytes().count(b"\n") == 3
    assert [r["cell_id"] for r in grid_runner.read_records(out)] == ["a", "c"]
    assert capsys.readouterr().err == ""  # reported once
    assert grid_runner.done_cells(out) == {"a", "c"}


def test_grid_skips_damaged_lines_of_a_fresh_file(tmp_path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    _damaged_file(out)
    assert grid_runner.done_cells(out) == {"a", "c"}  # the grid's own reader sets them aside too
    assert [r["cell_id"] for r in grid_runner.read_records(out)] == ["a", "c"]


def test_append_after_a_torn_last_line_starts_a_new_line(tmp_path, capsys) -> None:
    out = tmp_path / "results.jsonl"
    out.write_bytes(b'{"cell_id": "a"}\n{"cell_id": "b", "v"')
    append_jsonl(out, {"cell_id": "c"})
    assert [r["cell_id"] for r in read_jsonl(out)] == ["a", "c"]
    assert "line(s) 2" in capsys.readouterr().err


def test_a_read_only_results_file_is_read_without_rewriting(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "results.jsonl"
    _damaged_file(out)
    before = out.read_bytes()
    import mcmia_helpers.io as io

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(io.os, "open", refuse)
    assert [r["cell_id"] for r in read_jsonl(out)] == ["a", "c"]
    assert out.read_bytes() == before and "skipped" in capsys.readouterr().err


def test_records_stay_byte_identical_when_damaged_lines_are_removed(tmp_path) -> None:
    out = tmp_path / "results.jsonl"
    line = json.dumps({"cell_id": "a", "x": 0.1 + 0.2, "nested": {"b": [1, 2]}}, indent=None)
    out.write_text(line + "\nnot json\n")
    read_jsonl(out)
    assert out.read_text() == line + "\n"
