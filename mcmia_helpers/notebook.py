"""Small helpers that every chapter notebook uses in its setup and parameters cells.

``notebook_scale()`` reads ``MCMIA_SCALE`` (``book`` when unset: the committed outputs),
``glue()`` hands a computed number to the book's prose through myst-nb (and is a quiet no-op
where myst-nb is not installed, e.g. on Colab), and ``scale_note()`` is the one sentence that
every result in the book carries: what ran, on what data, at what scale.
"""

from __future__ import annotations

import os
from typing import Any

from mcmia_helpers.scales import SCALES
from mcmia_helpers.errors import UserError


def notebook_scale(default: str = "book") -> str:
    """The scale a notebook runs at: ``MCMIA_SCALE`` if set, else ``default``."""
    scale = os.environ.get("MCMIA_SCALE", default)
    if scale not in SCALES:
        raise UserError(f"MCMIA_SCALE={scale!r} is not a scale: use one of {', '.join(SCALES)}")
    return scale


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store ``value`` for ``{glue:text}`` in the book's prose (no-op without myst-nb)."""
    try:
        from myst_nb import glue as _glue
    except ImportError:  # Colab or plain Jupyter: the number is still printed by the cell
        return
    _glue(name, value, display=display)


def scale_note(scale: str, dataset_description: str, **sizes: Any) -> str:
    """The sentence that goes with every result: scale, data actually used, and sizes."""
    extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items())
    return f"Scale '{scale}'; {dataset_description}" + (f"; {extra}" if extra else "") + "."
