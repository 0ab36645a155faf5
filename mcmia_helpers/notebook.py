"""Small helpers that every chapter notebook uses in its setup and parameters cells.

``notebook_scale()`` reads ``MCMIA_SCALE`` (``book`` when unset: the committed outputs),
``glue()`` hands a computed number to the book's prose through myst-nb (and is a quiet no-op
where myst-nb is not installed, e.g. on Colab), and ``scale_note()`` is the one sentence that
every result in the book carries: what ran, on what data, at what scale. ``paper_table()``
shows a table as a paper would: plain-language columns, rates as percentages with their
interval in one cell, no index numbers, and narrow enough for the page.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from mcmia_helpers.errors import UserError
from mcmia_helpers.scales import SCALES

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler


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


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, *, percent: bool = False, digits: int | None = None,
                 interval: Sequence[float] | None = None) -> str:
    """One table cell as text: ``"12.3% [10.1, 14.6]"``, ``"0.652 [0.61, 0.69]"`` or ``"-"``.

    ``percent`` shows a rate in percent (``digits`` after the point, default 1) and its
    ``interval`` (low, high) in the same unit; otherwise numbers get ``digits`` (default 3)
    decimals, integers none, and text passes unchanged.
    """
    if _is_missing(value):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and not percent
                                  and digits is None and abs(value) >= 10):
        text = f"{int(value):,}"
    elif percent:
        d = 1 if digits is None else digits
        text = f"{100 * value:.{d}f}%"
    else:
        d = 3 if digits is None else digits
        text = f"{value:.{d}f}"
    if interval is not None and not any(_is_missing(v) for v in interval):
        lo, hi = interval
        if percent:
            d = 1 if digits is None else digits
            text += f" [{100 * lo:.{d}f}, {100 * hi:.{d}f}]"
        else:
            d = 2 if digits is None else digits
            text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def paper_table(frame: "pd.DataFrame", *, columns: Mapping[str, str] | None = None,
                percent: Iterable[str] = (), intervals: Mapping[str, tuple[str, str]] | None = None,
                digits: Mapping[str, int] | None = None, caption: str | None = None,
                index: bool = True) -> "Styler":
    """``frame`` shown as a paper's table (chapters 0-6 end their tables with it).

    ``intervals`` maps a value column to its (low, high) columns, which are folded into the
    value's cell and dropped; ``percent`` lists the columns that are rates (shown in percent);
    ``digits`` sets decimals per column; ``columns`` renames columns to plain language (applied
    last). The index, if ``index`` is true and it is not a plain 0..n-1 range, becomes the first
    column(s); index numbers are never shown. Returns a pandas ``Styler`` that renders as HTML
    with wrapped headers, so the table fits the page without horizontal scrolling.
    """
    import pandas as pd

    intervals = dict(intervals or {})
    percent = set(percent)
    digits = dict(digits or {})
    data = frame.copy()
    if isinstance(data.columns, pd.MultiIndex):
        data.columns = [" ".join(str(p) for p in col if str(p)) for col in data.columns]
    plain_index = isinstance(data.index, pd.RangeIndex)
    if index and not plain_index:
        data = data.reset_index()
    else:
        data = data.reset_index(drop=True)
    for name in list(percent) + list(intervals) + list(digits):
        if name not in data.columns:
            raise UserError(f"paper_table: no column {name!r}: use one of {list(data.columns)}")
    out = pd.DataFrame(index=data.index)
    folded = {c for pair in intervals.values() for c in pair}
    for col in data.columns:
        if col in folded:
            continue
        pair = intervals.get(col)
        out[col] = [
            format_value(v, percent=col in percent, digits=digits.get(col),
                         interval=None if pair is None else (data.at[i, pair[0]], data.at[i, pair[1]]))
            for i, v in zip(data.index, data[col])
        ]
    if columns:
        out = out.rename(columns=dict(columns))
    styler = out.style.hide(axis="index").set_table_styles([
        {"selector": "", "props": "border-collapse: collapse; font-size: 0.85em; width: auto;"},
        {"selector": "th", "props": "white-space: normal; text-align: left; vertical-align: bottom;"
                                    " max-width: 9em; border-bottom: 1px solid #888; padding: 2px 6px;"},
        {"selector": "td", "props": "text-align: right; padding: 2px 6px; white-space: nowrap;"},
        {"selector": "td:first-child", "props": "text-align: left; white-space: normal;"},
    ])
    if caption:
        styler = styler.set_caption(caption)
    return styler
