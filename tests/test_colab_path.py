"""The Colab path, offline (issue 13): a fresh Python that has torch but not this package, the
chapter's own setup cell installing the package from a ``file://`` git URL of this repository,
then chapter 0 executed at ``ci`` scale from a folder outside the clone.

What Colab has and this test reproduces:

* a fresh virtual environment with the scientific stack (here: a ``.pth`` file that points at a
  folder of links to this repository's ``.venv`` site-packages, *without* this package: no
  ``mcmia_helpers``, no dist-info, no editable finder; checked before the setup cell runs);
* ``REPOSITORY`` set in the setup cell (here to a ``file://`` URL of a ``git clone`` of the
  committed state of this repository) and the cell's unchanged ``pip install`` command. pip
  runs offline only through its environment: ``PIP_NO_INDEX=1`` (every dependency is already
  there) and ``PIP_NO_BUILD_ISOLATION=0`` (build with the setuptools already there instead of
  downloading one);
* a working folder outside the clone: no ``results/``, no ``.data/`` beside the notebook; the
  data and model caches in their default places under ``XDG_CACHE_HOME`` (a temporary folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from book_files import ROOT

CHAPTER = ROOT / "book" / "00_setup_and_data.ipynb"
#: Entries of this repository's site-packages that belong to the package itself (an editable
#: install): a fresh environment must not see them.
_OWN = re.compile(r"^(__editable__.*|mcmia_helpers.*|mcmia_helpers-.*|.*\.egg-link|a1_coverage\.pth)$",
                  re.IGNORECASE)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _fresh_environment(tmp: Path) -> Path:
    """A new venv whose Python finds torch & co. but not mcmia_helpers; returns its python."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                   capture_output=True)
    python = venv / "bin" / "python"
    # The venv's own old setuptools would shadow the stack's (torch wants setuptools>=77).
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
                   check=True, timeout=300, capture_output=True)
    deps = tmp / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not _OWN.match(entry.name) and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    target_site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    (target_site / "zz_colab_stack.pth").write_text(f"{deps}\n")
    return python


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MCMIA_", "PYTHON", "VIRTUAL_ENV", "JUPYTER", "PIP_"))}
    env.update(MCMIA_SCALE="ci", MCMIA_DEVICE="cpu", XDG_CACHE_HOME=str(tmp / "xdg"),
               HOME=str(tmp / "home"), PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",
               PIP_DISABLE_PIP_VERSION_CHECK="1", JUPYTER_PATH=str(tmp / "jupyter"),
               MPLBACKEND="Agg")
    (tmp / "home").mkdir(exist_ok=True)
    return env


def test_chapter_0_runs_from_a_fresh_environment(tmp_path, monkeypatch) -> None:
    started = time.perf_counter()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", "main", str(ROOT), str(clone)], check=True,
                   timeout=120)
    python = _fresh_environment(tmp_path)
    env = _env(tmp_path)
    work = tmp_path / "colab"  # outside the clone: no results/, no .data/ beside the notebook
    work.mkdir()
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, torch, ipykernel; "
                            "print(u.find_spec('mcmia_helpers') is None)"],
        env=env, capture_output=True, text=True, timeout=300, cwd=work)
    assert probe.stdout.strip() == "True", f"the fresh environment is not fresh: {probe}"

    kernel = tmp_path / "jupyter" / "kernels" / "fresh"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv", "language": "python"}))
    nb = nbformat.read(CHAPTER, as_version=4)
    setup = [c for c in nb.cells if c.cell_type == "code" and re.search(r"^REPOSITORY = ", c.source, re.M)]
    assert len(setup) == 1
    setup[0].source = re.sub(r'^REPOSITORY = ".*?"', f'REPOSITORY = "file://{clone}"',
                             setup[0].source, count=1, flags=re.M)
    assert f'REPOSITORY = "file://{clone}"' in setup[0].source
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name, raising=False)
    client = NotebookClient(nb, kernel_name="fresh", timeout=600,
                            resources={"metadata": {"path": str(work)}})
    client.execute()

    installed = subprocess.run(
        [str(python), "-c", "import mcmia_helpers, mcmia_helpers.attacks, mcmia_helpers.defences; "
                            "print(mcmia_helpers.__file__)"],
        env=env, capture_output=True, text=True, timeout=300, cwd=work)
    assert installed.returncode == 0, installed.stderr[-2000:]
    location = Path(installed.stdout.strip())
    assert str(tmp_path / "venv") in str(location) and str(ROOT) not in str(location)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "OFFLINE STAND-IN for mnist" in text
    assert not (work / "results").exists() and not (work / ".data").exists()
    assert (tmp_path / "xdg" / "mcmia" / "data").is_dir()  # the default data folder was used
    print(f"Colab path: {time.perf_counter() - started:.0f} s")
