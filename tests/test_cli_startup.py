"""A typo is answered without importing anything heavy (issue 23, item 6): argument parsing and
name validation import no torch, torchvision, opacus, sklearn, pandas or matplotlib; the light
name lists (:mod:`mcmia_helpers.choices`) equal the lists they stand for; ``--version`` prints
the package version. How fast that is lives in ``benchmarks/cli_startup.py``, not in a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mcmia_helpers
from mcmia_helpers import choices

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "opacus", "sklearn", "pandas", "matplotlib", "scipy", "jsonschema")

#: Runs the command line in-process, then prints which heavy modules got imported.
PROBE = """
import json, sys
from mcmia_helpers.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"status": status, "heavy": heavy}}))
"""


def _probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


@pytest.mark.parametrize("args", [
    ["run", "--arch", "resnet99", "--dataset", "mnist"],
    ["run", "--arch", "lenet5", "--dataset", "mnits"],
    ["run", "--arch", "lenet5", "--dataset", "mnist", "--defense", "prun"],
    ["run", "--arch", "lenet5", "--dataset", "mnist", "--attacks", "loss,lira"],
    ["run", "--arch", "lenet5", "--dataset", "mnist", "--pruning", "admmm"],
    ["run", "--arch", "lenet5", "--dataset", "mnist", "--seed", "-1"],
    ["run", "--arch", "lenet5", "--dataset", "mnist", "--calibration", "shadow"],
    ["zoo", "--arch", "vgg61", "--dataset", "cifar10"],
    ["zoo", "--arch", "lenet5", "--dataset", "mnist", "--defense", "prun"],
    ["zoo", "--arch", "lenet5", "--dataset", "mnist", "--defense", "prune", "--pruning", "admmm"],
    ["zoo", "--arch", "lenet5", "--dataset", "mnist", "--attacks", "lira_onlin,loss"],
    ["zoo", "--arch", "lenet5", "--dataset", "mnist", "--attacks", "shadow_top3"],
    ["grid", "--config", "ci"],
    ["runn"],
    ["--help"],
    ["--version"],
])
def test_a_bad_argument_imports_nothing_heavy(args) -> None:
    got = _probe(*args)
    assert got["heavy"] == [], got
    assert got["status"] in (0, 2), got
    assert "Traceback" not in got["stderr"]


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = ("import sys, mcmia_helpers, mcmia_helpers.cli, mcmia_helpers.validation, mcmia_helpers.scales; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stderr


def test_package_attributes_still_reach_every_submodule() -> None:
    for name in mcmia_helpers.__all__:
        assert getattr(mcmia_helpers, name) is not None
    assert mcmia_helpers.grid.cell_id is not None and "zoo" in dir(mcmia_helpers)
    with pytest.raises(AttributeError):
        mcmia_helpers.no_such_module  # noqa: B018


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "mcmia_helpers", "--version"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == f"mcmia_helpers {mcmia_helpers.__version__}"


def test_the_light_name_lists_equal_their_sources() -> None:
    """:mod:`mcmia_helpers.choices` repeats names so that parsing needs no torch: a name added
    to its source and not there fails here (instead of being refused on the command line)."""
    from mcmia_helpers.attacks.names import ATTACKS
    from mcmia_helpers.attacks.shadows import CALIBRATIONS
    from mcmia_helpers.data import DATASETS
    from mcmia_helpers.defences import DEFENSE_PARAMS, DEFENSES
    from mcmia_helpers.defences.pruning import PRUNING_CHOICES
    from mcmia_helpers.models import ARCHITECTURES
    from mcmia_helpers.zoo.train import DENSE_LONG, zoo_defences

    assert choices.DATASETS == DATASETS
    assert choices.ARCHITECTURES == ARCHITECTURES
    assert choices.DEFENSE_PARAMS == DEFENSE_PARAMS and set(choices.DEFENSE_PARAMS) == set(DEFENSES)
    assert choices.PRUNING_METHODS == tuple(PRUNING_CHOICES)
    assert choices.CALIBRATIONS == CALIBRATIONS
    assert choices.ATTACKS == ATTACKS
    from mcmia_helpers.zoo.evaluate import ZOO_ATTACKS

    assert choices.ZOO_ATTACKS == ZOO_ATTACKS
    assert choices.DENSE_LONG == DENSE_LONG and set(zoo_defences()) == {*choices.DEFENSE_PARAMS, DENSE_LONG}
