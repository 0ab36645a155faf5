"""Chapter 6's verdict table as a reader sees it: the readings grid, the numbers behind it, the
verdict of each comparison by the rule, the replication check, the one-paragraph answer and
the figures of changes against their margins.

The numbers and readings come from :mod:`mcmia_helpers.evidence` (``comparison_rows``: one row
per family, comparison, attacker, subset and metric); this module only arranges them, so the
chapter shows the calls that matter and none of the table plumbing. Every word of a verdict
comes from the rows (:func:`~mcmia_helpers.evidence.verdict_word`), never from prose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from mcmia_helpers import evidence
from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import mean_interval
from mcmia_helpers.notebook import ATTACKER_NAMES

if TYPE_CHECKING:  # pandas and matplotlib load on first use
    import matplotlib.pyplot as plt
    import pandas as pd
    from pandas.io.formats.style import Styler

#: One symbol per reading in the readings grid.
SYMBOLS: dict[str, str] = {"higher": "▲", "lower": "▼", "equivalent": "=", "inconclusive": "?",
                           "not resolved": "·", "too few targets": "·"}
#: Short column names of the grid (the metrics' plain names are long).
SHORT: dict[str, str] = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR 1%", "tpr_at_0_1pct_fpr": "TPR 0.1%",
                         "tpr_at_0_01pct_fpr": "TPR 0.01%", "accuracy_calibrated": "acc. (cal.)",
                         "accuracy_oracle": "acc. (best)"}
#: The attackers' plain names (:data:`mcmia_helpers.notebook.ATTACKER_NAMES`), the unaware one
#: marked as the paper's.
ATTACKERS = {**ATTACKER_NAMES, "unaware": f"{ATTACKER_NAMES['unaware']} (the paper's)"}
_KEYS = ["family", "comparison", "attacker"]


def zoo_utility_table(zoos: Mapping[str, Mapping[str, object]]) -> "pd.DataFrame":
    """Per family and zoo: models, mean test accuracy with a 95% t interval over the models, and
    mean member (training) accuracy. ``zoos`` maps a family to its ``{name: Zoo}``."""
    import pandas as pd

    rows = []
    for family, named in zoos.items():
        for name, zoo in named.items():
            mean, lo, hi = mean_interval(zoo.test_acc, bounds=(0, 1))
            rows.append({"family": family, "zoo": name, "models": zoo.n_models,
                         "test accuracy": mean, "lo": lo, "hi": hi,
                         "member accuracy": float(np.mean(zoo.member_acc()))})
    return pd.DataFrame(rows)


def verdicts(table: "pd.DataFrame") -> "pd.DataFrame":
    """One verdict per (family, comparison, attacker) from every metric and subset of ``table``
    (the rows of :func:`~mcmia_helpers.evidence.comparison_rows`): the word by
    :data:`~mcmia_helpers.evidence.VERDICT_RULE` and the sentence that names which metrics read
    what. Indexed by family, comparison and attacker, in the table's order."""
    import pandas as pd

    missing = {"family", "comparison", "attacker", "examples", "metric", "reading"} - set(table)
    if missing:
        raise UserError(f"verdicts: the table lacks the columns {sorted(missing)}")
    out = []
    for keys, part in table.groupby(_KEYS, sort=False):
        family, label, attacker = keys
        subject = f"{label} ({ATTACKERS.get(attacker, attacker)} attacker, {family})"
        out.append({"family": family, "comparison": label, "attacker": attacker,
                    "verdict": evidence.verdict_word(part["reading"]),
                    "sentence": evidence.verdict_sentence(subject, part.to_dict("records"))})
    return pd.DataFrame(out).set_index(_KEYS)


#: The grid's metric columns, under a header row naming the examples (rates are TPRs at that FPR).
GRID_COLUMNS: dict[str, str] = {"auc": "AUC", "tpr_at_1pct_fpr": "1%", "tpr_at_0_1pct_fpr": "0.1%",
                                "tpr_at_0_01pct_fpr": "0.01%", "accuracy_calibrated": "acc.",
                                "accuracy_oracle": "best acc."}


def reading_grid(table: "pd.DataFrame", verdict_frame: "pd.DataFrame", family: str) -> "Styler":
    """The readings of one family as a grid that fits the page: a row per comparison and
    attacker, a column per subset and metric (the TPR columns named by their FPR) holding the
    reading's symbol (:data:`SYMBOLS`), and the verdict."""
    import pandas as pd

    part = table[table.family == family]
    if part.empty:
        raise UserError(f"reading_grid: no rows for the family {family!r}")
    cells: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    columns: list[tuple[str, str]] = []
    for r in part.to_dict("records"):
        column = (str(r["examples"]), GRID_COLUMNS[str(r["metric"])])
        if column not in columns:
            columns.append(column)
        row = (str(r["comparison"]), str(r["attacker"]))
        cells.setdefault(row, {})[column] = SYMBOLS.get(str(r["reading"]), str(r["reading"]))
    words = verdict_frame.xs(family, level="family")["verdict"]
    grid = pd.DataFrame([[cells[row].get(c, "") for c in columns] + [words.loc[row]]
                         for row in cells],
                        index=pd.MultiIndex.from_tuples(list(cells), names=["comparison", "attacker"]),
                        columns=pd.MultiIndex.from_tuples(columns + [("", "verdict")]))
    legend = " ".join(f"{s} {r}" for r, s in SYMBOLS.items() if r != "too few targets")
    return (grid.style
            .set_caption(f"{family}: readings ({legend}; not read: rate not resolved or too few "
                         "targets). Aware: the defence-aware attacker; unaware: the paper's. "
                         "1%, 0.1%, 0.01%: TPR at that FPR; acc.: calibrated attack accuracy; "
                         "best acc.: the oracle's.")
            .set_table_styles([{"selector": "td, th", "props": "padding: 1px 4px; font-size: 0.75em;"
                                                              " text-align: center;"},
                               {"selector": "th.row_heading", "props": "text-align: left;"
                                                                        " max-width: 15em;"
                                                                        " white-space: normal;"},
                               {"selector": "th.col_heading", "props": "white-space: nowrap;"}]))


def change_table(table: "pd.DataFrame", family: str) -> "Styler":
    """The numbers behind one family's readings: the change with its 95% interval (percentage
    points for rates and accuracies, AUC in its own unit) and the reading, or why it is not
    read, one row per comparison, attacker and subset."""
    part = table[table.family == family]
    if part.empty:
        raise UserError(f"change_table: no rows for the family {family!r}")
    part = part.assign(cell=[f"{evidence.format_change(r)} {r['reading']}"
                             if r["reading"] in evidence.READINGS else evidence.format_change(r)
                             for r in part.to_dict("records")],
                       column=[SHORT[m] for m in part.metric])
    order = list(dict.fromkeys(part.column))
    wide = part.pivot_table(index=["comparison", "attacker", "examples"], columns="column",
                            values="cell", aggfunc="first", sort=False)[order].fillna("")
    wide = wide.reset_index()
    wide["attacker"] = wide["attacker"].map(ATTACKERS)
    return (wide.style.hide(axis="index")
            .set_caption(f"{family}: change, 95% interval over pairs of targets, reading "
                         "(points for rates and accuracies)")
            .set_table_styles([{"selector": "td, th", "props": "padding: 1px 5px; font-size: 0.75em;"
                                                              " text-align: left;"}]))


def answer_sentence(words: Mapping[tuple[str, str, str], str], families: Sequence[str]) -> str:
    """The chapter's answer in two sentences, from the verdict words of ADMM pruning minus dense
    and minus dense trained as long (``words[(family, attacker, comparison)]``), per family and
    attacker; a family without a word is left out."""
    sentences = []
    for attacker, who in (("aware", "Against the defence-aware attacker"),
                          ("unaware", "Against the paper's unaware attacker")):
        parts = []
        for family in families:
            dense = words.get((family, attacker, "ADMM 90% − dense"))
            long = words.get((family, attacker, "ADMM 90% − dense, as long"))
            if dense is None or long is None:
                continue
            parts.append(f"{family}: {dense} against dense, {long} against dense trained as long")
        if parts:
            sentences.append(f"{who}, ADMM pruning to 90% reads: " + "; ".join(parts) + ".")
    if not sentences:
        raise UserError("answer_sentence: no verdict words for ADMM pruning")
    return " ".join(sentences)


def box_table(table: "pd.DataFrame", families: Sequence[str],
              comparisons: Sequence[str] = ("ADMM 90% − dense", "ADMM 90% − dense, as long"),
              metrics: Sequence[str] = ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr",
                                        "accuracy_calibrated"),
              attacker: str = "aware", examples: str = "ordinary") -> "pd.DataFrame":
    """The few cells of the verdict table that the book's first page shows: per family and
    comparison, each metric's change with its interval and reading (or why it is not read)."""
    import pandas as pd

    rows = []
    for family in families:
        for label in comparisons:
            part = table[(table.family == family) & (table.comparison == label)
                         & (table.attacker == attacker) & (table.examples == examples)]
            if part.empty:
                continue
            cells = {}
            for metric in metrics:
                hit = part[part.metric == metric]
                if hit.empty:
                    cells[SHORT[metric]] = "-"
                    continue
                r = hit.iloc[0].to_dict()
                text = evidence.format_change(r)
                cells[SHORT[metric]] = (f"{text} {r['reading']}" if r["reading"] in evidence.READINGS
                                        else text)
            rows.append({"family": family, "comparison": label, **cells})
    if not rows:
        raise UserError("box_table: no rows for these families and comparisons")
    return pd.DataFrame(rows)


def replication_table(first: "pd.DataFrame", second: "pd.DataFrame") -> "pd.DataFrame":
    """The readings of the same comparisons on two zoo families drawn with different seeds, side
    by side: ``replicates`` is ``yes`` when both read the same, ``no`` when both are read and
    differ, ``not read`` when either is not read."""
    import pandas as pd

    keys = ["comparison", "attacker", "examples", "metric"]
    merged = pd.merge(first[keys + ["change", "low", "high", "reading"]],
                      second[keys + ["change", "low", "high", "reading"]], on=keys,
                      suffixes=(" (seed 0)", " (seed 1)"))
    if merged.empty:
        raise UserError("replication_table: the two families share no comparison")

    def same(a: str, b: str) -> str:
        if a not in evidence.READINGS or b not in evidence.READINGS:
            return "not read"
        return "yes" if a == b else "no"

    out = pd.DataFrame({
        "comparison": merged["comparison"], "attacker": merged["attacker"].map(ATTACKERS),
        "examples": merged["examples"], "metric": merged["metric"].map(evidence.METRICS),
        "seed 0": [f"{evidence.format_change({**r, 'change': r['change (seed 0)'], 'low': r['low (seed 0)'], 'high': r['high (seed 0)'], 'note': ''})} {r['reading (seed 0)']}"  # noqa: E501
                   for r in merged.to_dict("records")],
        "seed 1": [f"{evidence.format_change({**r, 'change': r['change (seed 1)'], 'low': r['low (seed 1)'], 'high': r['high (seed 1)'], 'note': ''})} {r['reading (seed 1)']}"  # noqa: E501
                   for r in merged.to_dict("records")],
        "replicates": [same(a, b) for a, b in zip(merged["reading (seed 0)"],
                                                  merged["reading (seed 1)"])],
    })
    return out


def plot_changes(table: "pd.DataFrame", comparisons: Sequence[str],
                 metrics: Sequence[str]) -> "plt.Figure":
    """Changes with their intervals: a row of panels per metric, ordinary examples on the left and
    canaries on the right, every panel on its own scale (the canaries' large changes never squash
    the ordinary examples' intervals), the metric's equivalence margin shaded around zero. Rows
    without an interval (too few targets) are drawn as open points; rows without a change (a
    rate the non-members do not resolve) are left out and the panel says so."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    subsets = ("ordinary", "canaries")
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10.0, len(metrics) * (0.8 + 0.4 * len(comparisons))),
                             sharey=True, squeeze=False)
    for row_axes, metric in zip(axes, metrics):
        scale = 100.0 if metric in evidence.IN_POINTS else 1.0
        margin = scale * evidence.MARGINS[metric]
        for ax, subset in zip(row_axes, subsets):
            ax.axvspan(-margin, margin, color="0.9", label="equivalence margin")
            ax.axvline(0, color="grey", lw=1)
            part = table[(table.metric == metric) & (table.examples == subset)]
            drawn = 0
            for k, label in enumerate(comparisons):
                hit = part[part.comparison == label]
                if hit.empty or _missing(hit.iloc[0]["change"]):
                    continue
                r = hit.iloc[0]
                drawn += 1
                if not _missing(r["low"]):
                    ax.errorbar(scale * r["change"], k, capsize=3, fmt="o", color="C0",
                                xerr=[[scale * (r["change"] - r["low"])],
                                      [scale * (r["high"] - r["change"])]])
                else:
                    ax.plot(scale * r["change"], k, "o", mfc="white", color="C0")
            if not drawn:
                ax.text(0.5, 0.5, "not resolved by these non-members", transform=ax.transAxes,
                        ha="center", va="center", fontsize=8, color="0.4")
            ax.set_title(f"{SHORT[metric]}, {subset}", fontsize=10)
            ax.set_xlabel("change, points" if scale == 100 else "change")
            ax.locator_params(axis="x", nbins=4)
    axes[0][0].set_yticks(np.arange(len(comparisons)), comparisons)
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=8)
    axes[0][0].set_ylim(len(comparisons) - 0.5, -0.5)
    # One legend below the panels, where it covers no point.
    fig.legend(handles=[Patch(color="0.9", label="equivalence margin"),
                        Line2D([], [], marker="o", ls="", color="C0",
                               label="change, 95% interval over pairs of targets"),
                        Line2D([], [], marker="o", ls="", mfc="white", color="C0",
                               label="change without an interval (too few targets)")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / fig.get_figheight(), 1, 1))
    return fig


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def plot_class_auc(spreads: Mapping[str, Mapping[str, np.ndarray]], ylabel: str) -> "plt.Figure":
    """Mean per-class attack AUC of each zoo (:func:`~mcmia_helpers.evidence.class_spread`), one
    bar group per class, chance marked; the y axis starts at chance (0.5)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.4))
    width = 0.8 / max(len(spreads), 1)
    classes = None
    for k, (name, sp) in enumerate(spreads.items()):
        classes = sp["classes"]
        ax.bar(np.arange(len(classes)) + (k - (len(spreads) - 1) / 2) * width,
               np.nanmean(sp["per_class"], axis=0), width, label=name, color=f"C{k}")
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_ylim(0.5, None)
    if classes is not None:
        ax.set_xticks(np.arange(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
