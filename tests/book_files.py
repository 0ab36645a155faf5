"""The book's files as the tests see them: the repository root and the chapters of ``_toc.yml``."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def chapter_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks of the chapters listed in ``root/_toc.yml`` (the pages a reader can reach)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]
