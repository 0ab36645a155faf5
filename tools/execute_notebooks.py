"""Execute chapter notebooks in place and store their outputs: `make notebooks`.

    MCMIA_SCALE=book python tools/execute_notebooks.py book/*.ipynb
    MCMIA_SCALE=ci python tools/execute_notebooks.py --times-only book/*.ipynb

Each notebook runs in a fresh kernel with its folder as working directory. The stored outputs
are then checked for what must never be committed (tracebacks, warnings, absolute machine
paths) and written atomically, so an interrupted run leaves every notebook whole.

Every run also records each chapter's wall time at its scale in ``book/run_times.json`` and
rewrites the run-time table of ``book/intro.md`` (between its ``run-times`` markers) from it,
so the times a reader sees are measured, never typed; then ``tools/render_intro.py`` rewrites the
intro's data table and warns of any value the intro pastes that no chapter glues. ``--times-only`` measures without
storing outputs (how the ``ci`` times are taken).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat
from nbclient import NotebookClient

FORBIDDEN = [
    (re.compile(r"Traceback \(most recent call last\)"), "a traceback"),
    (re.compile(r"\w+Warning:"), "a warning"),
    (re.compile(r"(/work/|/tmp/|/root/|/home/)"), "an absolute machine path"),
]


def _stored_text(nb: nbformat.NotebookNode) -> str:
    chunks = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            chunks.append(out.get("text", ""))
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/"):
                    chunks.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(chunks)


BOOK = Path(__file__).resolve().parent.parent / "book"
TIMES = BOOK / "run_times.json"
INTRO = BOOK / "intro.md"
START, END = "<!-- run-times:start -->", "<!-- run-times:end -->"
SCALE_COLUMNS = ("ci", "book")


def machine() -> str:
    """What the times were measured on, in words (CPU cores, and the GPU where one was used)."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} GPU"
    except ImportError:
        pass
    return f"{os.cpu_count()}-core CPU"


def record_time(times: dict, scale: str, chapter: str, seconds: float,
                note: str | None = None) -> dict:
    """``times`` with ``chapter``'s wall time at ``scale`` set (seconds, date, machine), and a
    ``note`` where the time was not one run from an empty cache (shown under the table)."""
    entry = {"seconds": round(float(seconds), 1), "date": date.today().isoformat(), "machine": machine()}
    if note:
        entry["note"] = note
    return {**times, scale: {**times.get(scale, {}), chapter: entry}}


def _minutes(entry: dict | None) -> str:
    if entry is None:
        return "not measured"
    seconds = entry["seconds"]
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def render_table(times: dict) -> str:
    """The intro's run-time table (markdown) from ``times``, one row per chapter measured."""
    chapters = sorted({c for scale in times.values() for c in scale})
    header = "| chapter | " + " | ".join(f"`{s}` scale" for s in SCALE_COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(SCALE_COLUMNS) + 1)]
    notes = []
    for chapter in chapters:
        cells = []
        for s in SCALE_COLUMNS:
            entry = times.get(s, {}).get(chapter)
            text = _minutes(entry)
            if entry is not None and entry.get("note"):
                notes.append(f"({len(notes) + 1}) {chapter} at `{s}` scale: {entry['note']}")
                text += f" ({len(notes)})"
            cells.append(text)
        lines.append(f"| {{doc}}`{chapter}` | " + " | ".join(cells) + " |")
    totals = []
    for s in SCALE_COLUMNS:
        measured = [times.get(s, {}).get(chapter) for chapter in chapters]
        totals.append("—" if None in measured else
                      _minutes({"seconds": sum(e["seconds"] for e in measured)}))
    lines.append("| whole book (the sum) | " + " | ".join(totals) + " |")
    machines = sorted({e["machine"] for s in SCALE_COLUMNS for e in times.get(s, {}).values()})
    lines.append("")
    lines.append(f"Measured on a {', '.join(machines)} by `tools/execute_notebooks.py`: each chapter "
                 "run alone, from an empty model cache (a second run loads its models and is faster)"
                 + (", except where a note says otherwise." if notes else "."))
    lines.extend(["", *notes] if notes else [])
    return "\n".join(lines)


def update_intro(intro: Path, times: dict) -> None:
    """Replace the text between the run-time markers of ``intro`` with :func:`render_table`."""
    _render_intro().replace_block(intro, START, END, render_table(times), "run-time")


def save_times(times: dict, path: Path = TIMES) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(times, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def execute(path: Path, timeout: int, store: bool = True) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - started
    if not store:
        return elapsed
    text = _stored_text(nb)
    problems = [what for pattern, what in FORBIDDEN if pattern.search(text)]
    if problems:
        raise SystemExit(f"{path}: stored outputs hold {', '.join(problems)}; fix the notebook")
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return elapsed


def _render_intro():
    """``tools/render_intro.py`` (the intro's data table), loaded beside this file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_intro", Path(__file__).with_name("render_intro.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=3 * 3600,
                        help="seconds per cell (chapter 6 trains its zoos in one cell)")
    parser.add_argument("--times-only", action="store_true",
                        help="measure run times without storing outputs (e.g. at MCMIA_SCALE=ci)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use MCMIA_CACHE as set (reuse trained models) instead of an empty cache per chapter")
    args = parser.parse_args()
    # The kernels must draw inline, whatever the caller's MPLBACKEND (the Makefile exports Agg
    # for the tests): with Agg, plt.show() draws nothing and the stored chapters lose their figures.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    scale = os.environ.get("MCMIA_SCALE", "book")
    render_intro = _render_intro()
    for path in args.notebooks:  # every notebook read before the first one runs
        try:
            nbformat.read(path, as_version=4)
        except (OSError, ValueError, nbformat.reader.NotJSONError, nbformat.ValidationError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"execute_notebooks.py: error: cannot read notebook {path}: {first}", file=sys.stderr)
            return 2
    for path in args.notebooks:
        with tempfile.TemporaryDirectory(prefix="mcmia-cache-") as cache:
            if not args.keep_cache:  # honest times: every chapter trains what it needs
                os.environ["MCMIA_CACHE"] = cache
            elapsed = execute(path, args.timeout, store=not args.times_only)
        print(f"{path}: executed at MCMIA_SCALE={scale} in {elapsed:.0f} s", flush=True)
        if args.keep_cache:
            continue  # a time with models already trained is not what a reader waits for
        times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
        times = record_time(times, scale, path.stem, elapsed)
        save_times(times)
        update_intro(INTRO, times)
        render_intro.update_intro(INTRO)  # the data table; the box's values are glued
        for problem in render_intro.missing_glue(INTRO):
            print(f"warning: {problem}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
