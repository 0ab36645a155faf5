"""Set the book's GitHub address in the one place it lives, and everywhere it is copied.

    python tools/set_repository.py https://github.com/OWNER/REPO [--branch main]

The maintainer runs this once (and commits the result). It writes ``repository.url`` and
``repository.branch`` into ``_config.yml``, turns on the Colab launch button of every chapter page
(``launch_buttons.colab_url``) and the repository button (``html.use_repository_button``), and
copies the address into the ``REPOSITORY`` and ``BRANCH`` constants of every chapter's setup cell,
which pip-installs the package from there where it is missing (Colab). Stored cell outputs are
kept. ``_config.yml`` is edited line by line, so its comments survive.

Until it runs, the address is empty: the book builds without launch buttons, and a chapter
opened where the package is not installed stops at its setup cell with a one-line error.
Colab opens notebooks from GitHub only, hence GitHub addresses only. A mistake (a malformed
address, a missing setup cell) ends with one line on stderr and exit status 2, and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import yaml

COLAB_URL = "https://colab.research.google.com"
GITHUB = re.compile(r"https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/([A-Za-z0-9._-]+?)(?:\.git)?/?")
BRANCH = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._/-]*")
# The two lines of a setup cell that carry the address (see the builders' setup_cell).
SETUP_LINES = {"REPOSITORY": re.compile(r'^REPOSITORY = "[^"\n]*"', re.M),
               "BRANCH": re.compile(r'^BRANCH = "[^"\n]*"', re.M)}


class ToolError(Exception):
    """A mistake the maintainer can fix; printed as one line, exit status 2."""


def normalise_url(url: str) -> str:
    """``https://github.com/OWNER/REPO`` (no ``.git``, no trailing slash), or ``ToolError``."""
    match = GITHUB.fullmatch(url.strip())
    if not match or match.group(2) in (".", ".."):
        raise ToolError(f"{url!r} is not a GitHub repository address: give https://github.com/OWNER/REPO "
                        "(Colab opens notebooks from GitHub only)")
    return f"https://github.com/{match.group(1)}/{match.group(2)}"


def check_branch(branch: str) -> str:
    if not BRANCH.fullmatch(branch) or ".." in branch or branch.endswith((".lock", "/")):
        raise ToolError(f"--branch {branch!r} is not a git branch name: use e.g. --branch main")
    return branch


def chapter_notebooks(root: Path) -> list[Path]:
    """The notebooks of the chapters listed in ``_toc.yml``."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [root / f"{f}.ipynb" for f in files if (root / f"{f}.ipynb").exists()]


def _set_in_section(text: str, section: str, key: str, value: str, path: Path) -> str:
    """Replace the value of ``key`` in the top-level ``section`` of a YAML text, keeping comments."""
    lines = text.splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        if re.match(rf"{re.escape(section)}:\s*(#.*)?$", line):
            inside = True
            continue
        if inside and line.strip() and not line.startswith((" ", "#")):
            break  # the next top-level key: the section had no such line
        match = re.match(rf"(\s+{re.escape(key)}\s*:\s*)([^#\n]*?)(\s*#.*)?$", line.rstrip("\n")) if inside else None
        if match:
            lines[i] = f"{match.group(1)}{value}{match.group(3) or ''}\n"
            return "".join(lines)
    raise ToolError(f"{path} has no '{section}: {key}:' line: restore that block (git checkout {path.name})")


def configure(text: str, url: str, branch: str, path: Path) -> str:
    """``_config.yml``'s text with the repository set and the Colab and repository buttons on."""
    for section, key, value in [("repository", "url", json.dumps(url)),
                                ("repository", "branch", json.dumps(branch)),
                                ("launch_buttons", "colab_url", json.dumps(COLAB_URL)),
                                ("html", "use_repository_button", "true")]:
        text = _set_in_section(text, section, key, value, path)
    config = yaml.safe_load(text)
    if (config["repository"]["url"], config["repository"]["branch"], config["launch_buttons"]["colab_url"],
            config["html"]["use_repository_button"]) != (url, branch, COLAB_URL, True):
        raise ToolError(f"{path}: the edited file does not read back as intended: check its repository block")
    return text


def set_setup_cell(nb: nbformat.NotebookNode, url: str, branch: str, path: Path) -> None:
    """Write the address into the notebook's one setup cell (the cell that defines REPOSITORY)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and SETUP_LINES["REPOSITORY"].search(c.source)]
    if len(cells) != 1:
        raise ToolError(f"{path} has {len(cells)} setup cells defining REPOSITORY (expected 1): rebuild it")
    cell = cells[0]
    for name, value in [("REPOSITORY", url), ("BRANCH", branch)]:
        if not SETUP_LINES[name].search(cell.source):
            raise ToolError(f"{path}: the setup cell has no {name} = \"...\" line: rebuild it")
        cell.source = SETUP_LINES[name].sub(lambda _: f"{name} = {json.dumps(value)}", cell.source, count=1)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def set_repository(root: Path, url: str, branch: str = "main") -> list[Path]:
    """Set the address everywhere under ``root``; returns the files written. All or nothing:
    every file is checked before the first one is written."""
    url, branch = normalise_url(url), check_branch(branch)
    config_path = root / "_config.yml"
    if not config_path.exists():
        raise ToolError(f"{config_path} does not exist: give the book's folder with --root")
    updates = {config_path: configure(config_path.read_text(), url, branch, config_path)}
    notebooks = chapter_notebooks(root)
    if not notebooks:
        raise ToolError(f"{root / '_toc.yml'} lists no chapter notebooks")
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        set_setup_cell(nb, url, branch, path)
        text = nbformat.writes(nb)
        updates[path] = text if text.endswith("\n") else text + "\n"
    for path, text in updates.items():
        _write(path, text)
    return list(updates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the book's GitHub address, https://github.com/OWNER/REPO")
    parser.add_argument("--branch", default="main", help="the branch Colab and pip read (default: main)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the book's folder (default: this repository)")
    args = parser.parse_args(argv)
    try:
        written = set_repository(args.root, args.url, args.branch)
    except ToolError as exc:
        print(f"set_repository.py: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, nbformat.reader.NotJSONError, nbformat.ValidationError) as exc:
        # a missing or unreadable file, a notebook that is not JSON: one line, no traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"set_repository.py: error: {first}", file=sys.stderr)
        return 2
    print(f"repository set to {normalise_url(args.url)} (branch {args.branch}): "
          f"{', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
