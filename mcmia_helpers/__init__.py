"""mcmia_helpers: the package behind the book *Membership Inference and Model Compression*.

Each module holds one idea of the book:

``data``         datasets, offline stand-ins and disjoint member/non-member splits (chapter 0)
``models``       LeNet-5, VGG16, MobileNetV2 and ResNet18 in small-image and ImageNet forms
``training``     one ``fit``/``evaluate`` pair, seeds, devices and the load-or-train cache
``scales``       the ``ci``/``book``/``paper`` scales in one place (``MCMIA_SCALE``)
``experiments``  one experiment = one JSON record; the command line is ``python -m mcmia_helpers``
``plots``        the figures the chapters share (``from mcmia_helpers import plots``)
"""

from __future__ import annotations

__version__ = "0.1.0"

from mcmia_helpers.errors import UserError  # noqa: E402
from mcmia_helpers import data, experiments, io, models, notebook, scales, training  # noqa: E402

__all__ = ["UserError", "__version__", "data", "experiments", "io", "models", "notebook", "scales",
           "training"]
