"""Small helpers that every chapter notebook uses in its setup and parameters cells.

``notebook_scale()`` reads ``MCMIA_SCALE`` (``book`` when unset: the committed outputs),
``glue()`` hands a computed number to the book's prose through myst-nb (and is a quiet no-op
where myst-nb is not installed, e.g. on Colab), and ``scale_note()`` is the one sentence that
every result in the book carries: what ran, on what data, at what scale. ``paper_table()``
shows a table as a paper would: plain-language columns, rates as percentages with their
interval in one cell, no index numbers, and narrow enough for the page. ``check_glued()`` is
what a chapter's hidden claim cell calls: every number and sentence glued into the prose must
equal the entry of the table it summarises (issue 22: a verdict computed from other scores than
the prose names passed when it was only checked against its own interval).

Chapter 5 adds the like-for-like tables over seeds: :func:`interval_text` (a value and its
interval in one cell that never wraps), :func:`change_table` and :func:`change_phrase` (each
defence minus its reference, from :func:`mcmia_helpers.exposure.seed_changes`, with its reading)
and :func:`summary_table` (the paper's kind of table, from
:func:`mcmia_helpers.exposure.seed_summary`).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

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


#: Every value :func:`glue` stored in this kernel, by name (what :func:`check_glued` reads).
GLUED: dict[str, Any] = {}


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store ``value`` for ``{glue:text}`` in the book's prose (no-op without myst-nb).

    NumPy scalars become Python numbers first: myst-nb formats a glued number from its text
    form, and ``np.float64(0.65)`` (NumPy 2's repr) is not a number it can format. The value is
    also kept in :data:`GLUED`, for the chapter's claim cell."""
    if isinstance(value, np.generic):
        value = value.item()
    GLUED[name] = value
    try:
        from myst_nb import glue as _glue
    except ImportError:  # Colab or plain Jupyter: the number is still printed by the cell
        return
    _glue(name, value, display=display)


def _same(glued: Any, wanted: Any, rel: float) -> bool:
    if isinstance(wanted, numbers.Real) and not isinstance(wanted, bool):
        if not isinstance(glued, numbers.Real) or isinstance(glued, bool):
            return False
        if math.isnan(wanted) or math.isnan(glued):
            return math.isnan(wanted) and math.isnan(glued)
        return math.isclose(glued, wanted, rel_tol=rel, abs_tol=1e-12)
    return type(glued) is type(wanted) and glued == wanted


def check_glued(expected: Mapping[str, Any], prefix: str, *, unchecked: Iterable[str] = (),
                rel: float = 1e-9) -> None:
    """Check a chapter's glued values against the entries of the tables the prose summarises.

    ``expected`` maps a glue name to the value read from its table (the rows built from the
    scores the prose names): numbers must agree to ``rel`` (relative), texts exactly. Every
    name glued under ``prefix`` must appear in ``expected`` or in ``unchecked`` (labels such as
    the scale), so a number glued later without a check fails too. Raises ``AssertionError``
    naming every mismatch, every expected name never glued and every glued name left out.
    """
    unchecked = set(unchecked)
    problems = []
    for name, wanted in expected.items():
        if name not in GLUED:
            problems.append(f"{name} was never glued")
        elif not _same(GLUED[name], wanted, rel):
            wanted = wanted.item() if isinstance(wanted, np.generic) else wanted
            problems.append(f"{name} glued as {GLUED[name]!r}, its table says {wanted!r}")
    left_out = sorted(n for n in GLUED if n.startswith(prefix) and n not in expected
                      and n not in unchecked)
    if left_out:
        problems.append(f"glued without a check against a table: {', '.join(left_out)}")
    if problems:
        raise AssertionError("; ".join(problems))


def table_row(frame: "pd.DataFrame", **where: Any) -> "pd.Series":
    """The one row of ``frame`` whose columns equal ``where`` (``column=value``), for a claim
    cell to read the entry that the prose summarises; ``AssertionError`` unless exactly one
    row matches."""
    rows = frame
    for column, value in where.items():
        rows = rows[rows[column] == value]
    if len(rows) != 1:
        raise AssertionError(f"{len(rows)} rows of the table have {where}, not one")
    return rows.iloc[0]


def scale_note(scale: str, dataset_description: str, **sizes: Any) -> str:
    """The sentence that goes with every result: scale, data actually used, and sizes."""
    extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items())
    return f"Scale '{scale}'; {dataset_description}" + (f"; {extra}" if extra else "") + "."


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and math.isnan(value))


def format_value(value: Any, *, percent: bool = False, digits: int | None = None,
                 interval: Sequence[float] | None = None) -> str:
    """One table cell as text: ``"12.3% [10.1, 14.6]"``, ``"0.652 [0.611, 0.690]"`` or ``"-"``.

    ``percent`` shows a rate in percent (``digits`` after the point, default 1) and its
    ``interval`` (low, high) in the same unit; otherwise numbers get ``digits`` (default 3)
    decimals, integers none (with thousands separators), infinity is ``∞``, a missing value
    ``-``, and text passes unchanged.
    """
    if _is_missing(value):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if isinstance(value, numbers.Integral) and not percent:
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
            d = 3 if digits is None else digits
            text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    return text


def paper_table(frame: "pd.DataFrame", *, columns: Mapping[str, str] | None = None,
                percent: Iterable[str] = (), intervals: Mapping[str, tuple[str, str]] | None = None,
                digits: Mapping[str, int] | None = None, caption: str | None = None,
                nowrap: Iterable[str] = ()) -> "Styler":
    """``frame`` shown as a paper's table (the chapters end their tables with it).

    ``intervals`` maps a value column to its (low, high) columns, which are folded into the
    value's cell and dropped; ``percent`` lists the columns that are rates (shown in percent);
    ``digits`` sets decimals per column; ``columns`` renames columns to plain language (applied
    last); ``nowrap`` lists columns (by their shown names) whose cells never wrap. A named
    index becomes the first column(s); index numbers are never shown; columns
    with several levels are joined with ", ". Numbers are right-aligned, text left-aligned.
    Returns a pandas ``Styler`` that renders as HTML with wrapped headers and text, so the
    table fits the page without horizontal scrolling.
    """
    import pandas as pd

    intervals = dict(intervals or {})
    percent = set(percent)
    digits = dict(digits or {})
    data = frame.copy()
    if isinstance(data.columns, pd.MultiIndex):
        data.columns = [", ".join(str(p) for p in col if str(p)) for col in data.columns]
    named_index = any(name is not None for name in data.index.names)
    data = data.reset_index(drop=not named_index)
    for name in list(percent) + list(intervals) + list(digits):
        if name not in data.columns:
            raise UserError(f"paper_table: no column {name!r}: use one of {list(data.columns)}")
    out = pd.DataFrame(index=data.index)
    folded = {c for pair in intervals.values() for c in pair}
    text_columns = []
    for col in data.columns:
        if col in folded:
            continue
        pair = intervals.get(col)
        if not (pd.api.types.is_numeric_dtype(data[col]) or col in percent or pair):
            text_columns.append(col)
        out[col] = [
            format_value(v, percent=col in percent, digits=digits.get(col),
                         interval=None if pair is None else (data.at[i, pair[0]], data.at[i, pair[1]]))
            for i, v in zip(data.index, data[col])
        ]
    renamed = dict(columns or {})
    out = out.rename(columns=renamed)
    text_columns = [renamed.get(c, c) for c in text_columns]
    styler = out.style.hide(axis="index").set_table_styles([
        {"selector": "", "props": "border-collapse: collapse; font-size: 0.85em;"},
        {"selector": "th", "props": "white-space: normal; text-align: right; vertical-align: bottom;"
                                    " max-width: 10em; border-bottom: 1px solid #888; padding: 2px 6px;"},
        {"selector": "td", "props": "text-align: right; padding: 2px 6px;"},
    ])
    if text_columns:
        styler = styler.set_properties(subset=text_columns, **{"text-align": "left"})
    wide = [c for c in nowrap if c in out.columns]
    if wide:
        styler = styler.set_properties(subset=wide, **{"white-space": "nowrap"})
    if caption:
        styler = styler.set_caption(caption)
    return styler


def attack_table(results: Mapping[str, Mapping[str, Any]], *, caption: str | None = None,
                 label: str = "attack") -> "Styler":
    """The attacks of one target as a paper's table (``results``: ``{attack: attack_metrics}``).

    Columns, most telling first: AUC, TPR at 1% and 0.1% FPR (each with its 95% interval, and
    only where the target's non-members allow at least ten false positives; elsewhere the cell
    says how many non-members the rate would need), the
    attack accuracy at the attacker's calibrated threshold (``-`` where the attack has none)
    and the best accuracy any threshold could reach on these labels (the oracle's,
    ``0.5 + advantage / 2``: an upper bound no real attacker attains).
    """
    import pandas as pd

    from mcmia_helpers.attacks.names import plain_name
    from mcmia_helpers.metrics import nonmembers_needed, resolves

    rows = []
    for name, m in results.items():
        ci = m.get("ci95", {})
        calibrated = m.get("threshold_kind") == "calibrated"
        rates = {}
        for key, title in (("tpr_at_1pct_fpr", "TPR at 1% FPR"),
                           ("tpr_at_0_1pct_fpr", "TPR at 0.1% FPR")):
            nonmembers = m.get("n_nonmembers")
            if nonmembers is not None and not resolves(key, nonmembers):
                rates[title] = f"needs {nonmembers_needed(key):,} non-members"
            else:
                rates[title] = format_value(m[key], percent=True, interval=ci.get(key))
        rows.append({
            label: plain_name(name),
            "AUC": format_value(m["auc"], interval=ci.get("auc")),
            **rates,
            "accuracy, calibrated threshold": format_value(m["accuracy"] if calibrated else None,
                                                           percent=True),
            "accuracy, best threshold (oracle)": format_value(0.5 + m["advantage"] / 2,
                                                              percent=True),
        })
    return paper_table(pd.DataFrame(rows), caption=caption)


# --- Chapter 5: like-for-like tables over seeds ----------------------------------------------

#: The non-breaking space of interval cells, which never wrap onto two lines.
NBSP = "\u00a0"
MINUS = "\u2212"

#: Plain names of the measures chapter 5 tables (rates in percentage points, AUC as a number).
MEASURE_NAMES: dict[str, str] = {
    "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR at 1% FPR (points)",
    "tpr_at_0_1pct_fpr": "TPR at 0.1% FPR (points)",
    "accuracy_calibrated": "attack accuracy, calibrated (points)",
    "accuracy_oracle": "attack accuracy, oracle (points)",
    "test_acc": "test accuracy (%)",
}

#: Plain names of the grid's defences (the records' ``defense`` field).
DEFENCE_NAMES: dict[str, str] = {"none": "baseline", "prune": "ADMM pruning",
                                 "minmax": "Min-Max", "prune+minmax": "ADMM pruning & Min-Max",
                                 "dp": "DP-SGD"}

#: Plain names of the datasets (the records' ``dataset_requested`` and ``dataset_used``).
DATASET_NAMES: dict[str, str] = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                                 "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                                 "imagenet": "ImageNet", "digits": "digits"}

#: Plain names of the book's architectures.
ARCH_NAMES: dict[str, str] = {"lenet5": "LeNet-5", "vgg16": "VGG16", "mobilenetv2": "MobileNetV2",
                              "resnet18": "ResNet18"}


def _number(value: float, digits: int, signed: bool) -> str:
    if round(value, digits) == 0:
        value = 0.0  # no "-0.0"
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text.replace("-", MINUS)


def interval_text(value: float | None, low: float | None = None, high: float | None = None, *,
                  points: bool = False, digits: int | None = None, signed: bool = False) -> str:
    """One value with its 95% interval as one unbreakable cell: ``"+0.012 [−0.005, +0.029]"``.

    ``points`` shows a fraction in percentage points (times 100, one decimal by default; AUC
    keeps three). Spaces are non-breaking and minus signs are U+2212, so a table cell never
    wraps the interval onto a second line. A missing value is ``"-"``; a value without an
    interval is printed alone."""
    if _is_missing(value):
        return "-"
    scale = 100.0 if points else 1.0
    d = (1 if points else 3) if digits is None else digits
    text = _number(scale * float(value), d, signed)
    if not (_is_missing(low) or _is_missing(high)):
        text += (f"{NBSP}[{_number(scale * float(low), d, signed)},{NBSP}"
                 f"{_number(scale * float(high), d, signed)}]")
    return text


def change_cell(row: Mapping[str, Any], metric: str, needed: int | None = None) -> str:
    """The change column of :func:`change_table` for one row of
    :func:`mcmia_helpers.exposure.seed_changes`: the change with its interval over seeds, or
    why there is none (too few non-members for the rate: ``"- (500 of 1,000 non-members)"``
    with ``needed``; too few seeds for an interval)."""
    if not row["resolved"]:
        have = f"{row['nonmembers']:,}" + (f" of {needed:,}" if needed else "")
        return f"- ({have} non-members)"
    text = interval_text(row["change"], row["low"], row["high"], points=metric != "auc",
                         signed=True)
    if _is_missing(row["low"]):
        text += f" (no interval: {row['seeds']} seed{'s' if row['seeds'] != 1 else ''})"
    return text


#: Plain names of chapter 5's attackers (:data:`mcmia_helpers.exposure.ATTACKERS`).
ATTACKER_NAMES: dict[str, str] = {"unaware": "unaware", "aware": "defence-aware",
                                  "both": "either"}


def change_table(changes: "pd.DataFrame", needed: Mapping[str, int] | None = None) -> "pd.DataFrame":
    """Chapter 5's like-for-like table, from :func:`mcmia_helpers.exposure.seed_changes`.

    One row per architecture, comparison, attacker and measure, in that order: the change
    (defence minus reference, seed by seed) with its 95% interval over seeds and its reading;
    on the first row of each comparison, the test-accuracy change that pays for it (points,
    with its interval; the same for both attackers, so shown once; the compression is in the
    utility table). The comparison column is left out when the table holds one comparison
    (the caption names it). ``needed`` (measure -> non-members it needs,
    :func:`mcmia_helpers.metrics.nonmembers_needed`) completes the cells of unresolved rates.
    Plain names everywhere; every cell is text, ready for :func:`paper_table`.
    """
    import pandas as pd

    needed = dict(needed or {})
    one_comparison = len(changes.groupby(["defense", "reference"])) == 1
    attacker_order = {a: k for k, a in enumerate(dict.fromkeys(changes["attacker"]))}
    rows = []
    for (arch, defense, reference), comparison in changes.groupby(
            ["arch", "defense", "reference"], sort=False):
        # a stable sort keeps each attacker's measures in their order, unaware rows first
        ordered = comparison.sort_values("attacker", key=lambda a: a.map(attacker_order),
                                         kind="stable")
        label = f"{DEFENCE_NAMES.get(defense, defense)} − {DEFENCE_NAMES.get(reference, reference)}"
        for i, (_, r) in enumerate(ordered.iterrows()):
            first_of_attacker = i == 0 or r["attacker"] != ordered["attacker"].iloc[i - 1]
            row = {"architecture": ARCH_NAMES.get(arch, arch) if i == 0 else ""}
            if not one_comparison:
                row["comparison"] = label if i == 0 else ""
            row |= {
                "attacker": ATTACKER_NAMES.get(r["attacker"], r["attacker"])
                if first_of_attacker else "",
                "measure": MEASURE_NAMES[r["metric"]].replace(" (points)", ""),
                "change [95% interval]": change_cell(r, r["metric"], needed.get(r["metric"])),
                "reading": r["reading"],
                "test accuracy, points": interval_text(
                    r["test_change"], r["test_low"], r["test_high"], points=True, signed=True)
                if i == 0 else "",
            }
            rows.append(row)
    return pd.DataFrame(rows)


def summary_table(summary: "pd.DataFrame", measures: Sequence[str]) -> "pd.DataFrame":
    """The paper's kind of table from :func:`mcmia_helpers.exposure.seed_summary`: one row per
    architecture, defence and attacker, each measure's mean over seeds with its 95% interval
    (rates in percent), ``-`` where a rate is not resolved; seeds, compression and privacy
    budget. An undefended model has one row, its attacker "either": without a defence the
    unaware and the defence-aware attacker calibrate on the same models."""
    import pandas as pd

    rows = []
    for _, r in summary.iterrows():
        attacker = r.get("attacker")
        if r["defense"] == "none" and attacker == "aware":
            continue
        row = {"architecture": ARCH_NAMES.get(r["arch"], r["arch"]),
               "defence": DEFENCE_NAMES.get(r["defense"], r["defense"]), "seeds": str(int(r["seeds"]))}
        if attacker is not None:
            row["attacker"] = ATTACKER_NAMES["both" if r["defense"] == "none" else attacker]
        for m in measures:
            name = MEASURE_NAMES[m].replace(" (points)", " (%)")
            row[name] = interval_text(r[m], r[f"{m}_low"], r[f"{m}_high"], points=m != "auc")
        row["compression"] = f"{r['compression']:.1f}x"
        row["ε"] = "-" if math.isinf(r["epsilon"]) else f"{r['epsilon']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def change_phrase(row: Mapping[str, Any], needed: Mapping[str, int] | None = None, *,
                  test: bool = False) -> str:
    """One row of :func:`mcmia_helpers.exposure.seed_changes` as the prose says it:
    ``"+10.2 [+4.3, +16.0] points, higher"`` (AUC without a unit), ``"not resolved (500
    non-members per run, 1,000 needed)"``, or with ``test`` the test-accuracy change of the row's
    comparison (``"-8.3 [-16.0, -0.6] points"``). Numbers as in :func:`change_table`."""
    if test:
        return interval_text(row["test_change"], row["test_low"], row["test_high"], points=True,
                             signed=True) + " points"
    metric = row["metric"]
    if not row["resolved"]:
        need = (needed or {}).get(metric)
        return (f"not resolved ({row['nonmembers']:,} non-members per run"
                + (f", {need:,} needed)" if need else ")"))
    text = interval_text(row["change"], row["low"], row["high"], points=metric != "auc", signed=True)
    if metric != "auc":
        text += " points"
    if _is_missing(row["low"]):
        text += f" (no interval: {row['seeds']} seed{'s' if row['seeds'] != 1 else ''})"
    return f"{text}, {row['reading']}"
