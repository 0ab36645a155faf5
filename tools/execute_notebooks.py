"""Execute chapter notebooks in place and store their outputs: `make notebooks`.

    MCMIA_SCALE=book python tools/execute_notebooks.py book/*.ipynb

Each notebook runs in a fresh kernel with its folder as working directory. The stored outputs
are then checked for what must never be committed (tracebacks, warnings, absolute machine
paths) and written atomically, so an interrupted run leaves every notebook whole.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
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


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - started
    text = _stored_text(nb)
    problems = [what for pattern, what in FORBIDDEN if pattern.search(text)]
    if problems:
        raise SystemExit(f"{path}: stored outputs hold {', '.join(problems)}; fix the notebook")
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for path in args.notebooks:
        elapsed = execute(path, args.timeout)
        print(f"{path}: executed at MCMIA_SCALE={os.environ.get('MCMIA_SCALE', 'book')} in {elapsed:.0f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
