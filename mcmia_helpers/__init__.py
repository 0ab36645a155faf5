"""mcmia_helpers: the package behind the book *Membership Inference and Model Compression*.

Each module holds one idea of the book:

``data``         datasets, offline stand-ins and disjoint member/non-member splits (chapter 0)
``models``       LeNet-5, VGG16, MobileNetV2 and ResNet18 in small-image and ImageNet forms
``training``     one ``fit``/``evaluate`` pair, seeds, devices and the load-or-train cache
``scales``       the ``ci``/``book``/``paper`` scales in one place (``MCMIA_SCALE``)
``attacks``      membership inference attacks (chapter 1); ``metrics`` turns scores into metrics
``shadow``       many shadow models trained together (chapter 1, ``benchmarks/``)
``pruning``      ADMM and magnitude pruning (chapter 2); ``compression`` the compression report
``defences``     the Min-Max game and pruning inside it (chapter 3)
``privacy``      DP-SGD with Opacus (chapter 4)
``explorer``     tables, ROC figures and the ipywidgets results explorer over grid records (chapter 5)
``exposure``     per-example exposure, class-wise leakage and changes over seeds (chapter 6)
``grid``         the experiment runner over YAML grids (chapter 5)
``experiments``  one experiment = one JSON record; the command line is ``python -m mcmia_helpers``
``plots``        the figures the chapters share (``from mcmia_helpers import plots``)
"""

from __future__ import annotations

__version__ = "0.1.0"

from mcmia_helpers.errors import UserError  # noqa: E402
from mcmia_helpers import (attacks, compression, data, defences, experiments, explorer,  # noqa: E402
                           exposure, grid, io, metrics, models, notebook, privacy, pruning, scales,
                           shadow, training)

__all__ = ["UserError", "__version__", "attacks", "compression", "data", "defences", "experiments",
           "explorer", "exposure", "grid", "io", "metrics", "models", "notebook", "privacy", "pruning",
           "scales", "shadow", "training"]
