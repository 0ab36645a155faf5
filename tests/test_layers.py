"""The package's layers (data -> models -> training -> defences -> attacks -> experiments ->
grid/cli) are written down once, in pyproject.toml's import-linter contract, and checked here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mcmia_helpers"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _modules() -> set[str]:
    """Every module and subpackage directly below ``mcmia_helpers`` (what a layer can hold)."""
    out = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    out |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return {f"mcmia_helpers.{name}" for name in out}


def _layer_members(layer: str) -> list[str]:
    return [m.strip() for m in re.split(r"[|:]", layer) if m.strip()]


def _run_lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_every_module_sits_in_exactly_one_layer() -> None:
    top = next(c for c in _contracts() if c["type"] == "layers" and "containers" not in c)
    named = [m for layer in top["layers"] for m in _layer_members(layer)]
    assert sorted(named) == sorted(set(named)), "a module is named in two layers"
    assert set(named) == _modules()


def test_subpackage_contracts_name_every_module() -> None:
    for contract in (c for c in _contracts() if "containers" in c):
        (container,) = contract["containers"]
        folder = PACKAGE.joinpath(*container.split(".")[1:])
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in folder.glob("*/__init__.py")}  # subpackages
        named = {m for layer in contract["layers"] for m in _layer_members(layer)}
        assert named == modules, container


def test_lint_imports_passes() -> None:
    result = _run_lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_fails_and_names_both_modules(tmp_path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "mcmia_helpers",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    data = tmp_path / "mcmia_helpers" / "data.py"
    data.write_text(data.read_text() + "\nfrom mcmia_helpers.experiments import run_experiment  # upward\n")
    result = _run_lint_imports(tmp_path)
    assert result.returncode != 0
    assert "mcmia_helpers.data is not allowed to import mcmia_helpers.experiments" in result.stdout


def test_api_page_documents_every_module() -> None:
    page = (ROOT / "book" / "api.md").read_text()
    documented = set(re.findall(r"\.\. automodule:: (mcmia_helpers[\w.]*)", page))
    every = {f"mcmia_helpers.{'.'.join(p.relative_to(PACKAGE).with_suffix('').parts)}"
             .removesuffix(".__init__") for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    every.discard("mcmia_helpers")
    assert documented == every
