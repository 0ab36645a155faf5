"""mcmia_helpers: the package behind the book *Membership Inference and Model Compression*.

A stack of layers in the order of the chapters; each imports only from the layers below it
(checked by import-linter, see ``[tool.importlinter]`` in ``pyproject.toml``):

1. foundations: ``errors`` (one-line user errors), ``io`` (atomic writes), ``scales``
   (the ``ci``/``book``/``paper`` sizes, ``MCMIA_SCALE``);
2. ``data`` (datasets, offline stand-ins, disjoint member/non-member splits; chapter 0),
   ``models`` (LeNet-5, VGG16, MobileNetV2, ResNet18; Nasr's inference network), ``metrics``
   (scores -> AUC, TPR at low FPR, intervals);
3. ``training`` (``fit``/``evaluate``, seeds, devices, the load-or-train cache) and ``shadow``
   (many models trained together on the grouped engine);
4. ``context``: ``ExperimentSpec``, ``TargetContext``, ``prepare``, ``shadow_context``: what a
   trainer needs, knowing no attack and no defence;
5. ``defences/``: the registry, ``pruning`` and ``compression`` (chapter 2), ``minmax``
   (chapter 3), ``dp`` (chapter 4);
6. ``attacks/``: ``names``, ``scores``, ``classifiers``, ``lira``, ``shadows`` (the attacker's
   models, defence-aware ones through the registry) and ``runner`` (chapter 1);
7. ``zoo/``: model zoos, every model a target and the others its shadow models (leave-one-out
   LiRA, paired defences, canaries); ``experiments``: one experiment = one JSON record;
8. ``plots``, then ``grid`` (YAML grids, chapter 5), ``exposure`` (chapter 6), ``explorer``
   (chapter 5), ``notebook`` (glue, scales in notebooks);
9. ``verdicts`` (chapter 6's verdict table and figures) and ``cli``:
   ``python -m mcmia_helpers run|grid|zoo|data`` (its names from ``choices``, which
   imports nothing: the submodules are imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from mcmia_helpers.errors import UserError
from mcmia_helpers.version import __version__

#: The subpackages and modules reachable as attributes (``mcmia_helpers.grid``), imported on
#: first use (PEP 562): ``import mcmia_helpers`` alone, or the command line's argument parsing,
#: imports no torch, so a typo is answered in a fraction of a second.
_SUBMODULES = ("attacks", "choices", "context", "data", "defences", "evidence", "experiments", "explorer",
               "exposure", "grid", "io", "metrics", "models", "notebook", "plots", "scales",
               "shadow", "training", "verdicts", "zoo")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"mcmia_helpers.{name}")
    raise AttributeError(f"module 'mcmia_helpers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))


__all__ = ["UserError", "__version__", *_SUBMODULES]
