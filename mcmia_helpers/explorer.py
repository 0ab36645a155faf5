"""Explore stored grid results: tables, ROC curves and an interactive widget (chapter 5).

The grid runner (:mod:`mcmia_helpers.grid`) writes one JSON record per cell. This module turns a
list of such records into

* :func:`results_frame`: one row per record and attack (architecture, data, defence, a readable
  parameter label, seed, test accuracy, attack metrics, compression, epsilon);
* :func:`summary`: one selection (architecture, defence, parameter) averaged over seeds, with a
  Student-t 95% interval when there are two seeds or more (else the bootstrap interval of the
  single run), and :func:`format_summary` to print it as ``mean [lo, hi]``;
* :func:`plot_roc_for`: the ROC curve of each seed of one selection, from the compact ROC that
  :func:`~mcmia_helpers.metrics.attack_metrics` stores in every record, next to the undefended
  baseline of the same architecture;
* :func:`explorer`: dropdowns over all of the above (ipywidgets; Jupyter and Colab);
* :func:`static_overview`: one figure for the built book, which cannot run widgets.

Records written before the ROC was stored (no ``roc`` key) still work in the tables; their ROC
plots say that there is no curve to draw.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import ROC_FPR_GRID, mean_interval
from mcmia_helpers.plots import roc_axes

if TYPE_CHECKING:  # ipywidgets is optional: only the widget needs it
    import ipywidgets

#: Reader-facing names of the defences (the chapters' names), in the order the menus list them.
DEFENCE_LABELS: dict[str, str] = {"none": "baseline", "prune": "pruning", "minmax": "Min-Max",
                                  "prune+minmax": "pruning & Min-Max", "dp": "DP-SGD"}

#: For each attack metric, its column in the frame mapped to its key in a record's attack metrics.
METRIC_COLUMNS: dict[str, str] = {"accuracy": "accuracy", "auc": "auc",
                                  "tpr@1%": "tpr_at_1pct_fpr", "tpr@0.1%": "tpr_at_0_1pct_fpr"}

_FLOOR = 1e-4  # the lowest rate shown on log axes (the compact ROC's first non-zero FPR)


# --------------------------------------------------------------------------- tables


def _quiet_defaults() -> dict[str, Any]:
    """The secondary parameters a label leaves out at their default (``k_steps=1`` of the Min-Max
    game, DP's ``max_grad_norm=1``): records with canonical parameters (defaults filled in) and
    older records without them then share one label, and one group in the tables."""
    from mcmia_helpers.defences.dp import DEFAULT_MAX_GRAD_NORM
    from mcmia_helpers.defences.minmax import MINMAX_DEFAULTS

    return {"k_steps": MINMAX_DEFAULTS["k_steps"], "max_grad_norm": DEFAULT_MAX_GRAD_NORM}


def _is_quiet_default(name: str, value: Any) -> bool:
    quiet = _quiet_defaults()
    return name in quiet and not isinstance(value, bool) and value == quiet[name]


def parameter_label(params: Mapping[str, Any]) -> str:
    """A short, readable name for a defence's parameters: ``"admm 90%"``, ``"lam=3"``, ``"eps=8"``,
    ``"admm 90%, lam=3"``; ``"none"`` for a defence without parameters."""
    params = {k: v for k, v in params.items() if v is not None and not _is_quiet_default(k, v)}
    parts = []
    if "sparsity" in params:
        pct = f"{100 * float(params.pop('sparsity')):g}%"
        method = params.pop("pruning", None)
        parts.append(f"{method} {pct}" if method else f"{pct} sparse")
    for key, short in (("lam", "lam"), ("epsilon", "eps")):
        if key in params:
            value = params.pop(key)
            parts.append(f"{short}={value:g}" if isinstance(value, (int, float)) else f"{short}={value}")
    parts += [f"{k}={params[k]}" for k in sorted(params)]
    return ", ".join(parts) or "none"


def results_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record and attack of a grid's records (see :func:`mcmia_helpers.grid.read_records`).

    Columns: ``arch, dataset, dataset_used, defense, parameter, seed, test_acc, attack, accuracy,
    auc, tpr@1%, tpr@0.1%`` (each attack metric with its bootstrap interval in ``<metric>_lo`` and
    ``<metric>_hi``), ``compression`` (1.0 for a model that was not pruned) and ``epsilon``
    (``inf`` without differential privacy). ``dataset`` is the dataset the grid asked for,
    ``dataset_used`` the one actually measured (an offline stand-in where there is one).
    """
    records = _check_records(records)
    rows = []
    for r in records:
        base = {"arch": r["arch"], "dataset": _dataset(r),
                "dataset_used": r.get("dataset_used", r.get("dataset_requested", "?")),
                "defense": r["defense"], "parameter": parameter_label(r.get("params", {})),
                "seed": int(r.get("seed", 0)), "test_acc": float(r.get("test_acc", np.nan))}
        tail = {"compression": float(r.get("compression_ratio") or 1.0),
                "epsilon": float(r["epsilon"]) if r.get("epsilon") is not None else np.inf}
        for attack, m in r.get("attacks", {}).items():
            row = {**base, "attack": attack}
            for column, key in METRIC_COLUMNS.items():
                row[column] = float(m[key])
                lo, hi = m.get("ci95", {}).get(key, (np.nan, np.nan))
                row[f"{column}_lo"], row[f"{column}_hi"] = float(lo), float(hi)
            rows.append({**row, **tail})
    if not rows:
        raise UserError("the records hold no attack results: run the grid with at least one attack")
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame, arch: str, defense: str, parameter: str | None = None, *,
            dataset: str | None = None) -> pd.DataFrame:
    """Mean over seeds of one selection, one row per attack, with 95% intervals.

    ``parameter`` is a label of :func:`parameter_label` (``None``: the selection's only one);
    ``dataset`` (the grid's dataset name, e.g. ``"cifar10"``) is needed only when ``arch`` ran
    on several. With two seeds
    or more the interval is Student's t over seeds (``interval == "t over seeds"``); with one
    seed it is that run's bootstrap interval over examples (test accuracy: none). Rates are
    clipped to [0, 1]. Columns: ``seeds, interval``, then ``<metric>, <metric>_lo, <metric>_hi``
    for ``test_acc`` and each attack metric, then ``compression`` and ``epsilon`` (means).
    """
    part = _select(frame, arch, defense, parameter, dataset)
    rows = {}
    for attack, group in part.groupby("attack", sort=False):
        n = group["seed"].nunique()
        row: dict[str, Any] = {"seeds": n, "interval": "t over seeds" if n >= 2 else "bootstrap (1 seed)"}
        for column in ("test_acc", *METRIC_COLUMNS):
            values = group[column].to_numpy(dtype=float)
            mean = float(values.mean())
            if n >= 2:
                mean, lo, hi = mean_interval(values, bounds=(0.0, 1.0))
            elif column in METRIC_COLUMNS:
                lo, hi = float(group[f"{column}_lo"].iloc[0]), float(group[f"{column}_hi"].iloc[0])
            else:
                lo = hi = np.nan
            row.update({column: mean, f"{column}_lo": lo, f"{column}_hi": hi})
        row["compression"] = float(group["compression"].mean())
        row["epsilon"] = float(group["epsilon"].mean())
        rows[attack] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "attack"
    return table


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary` as text: each metric as ``mean [lo, hi]`` (``mean`` alone without interval)."""
    out = pd.DataFrame(index=table.index)
    out["seeds"] = table["seeds"]
    for column in ("test_acc", *METRIC_COLUMNS):
        out[column] = [f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
                       for m, lo, hi in zip(table[column], table[f"{column}_lo"], table[f"{column}_hi"])]
    out["compression"] = [f"{c:.1f}x" for c in table["compression"]]
    out["epsilon"] = ["-" if np.isinf(e) else f"{e:.2f}" for e in table["epsilon"]]
    out["interval"] = table["interval"]
    return out


def _check_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    records = list(records)
    if not records:
        raise UserError("no records to explore: run `python -m mcmia_helpers grid --config "
                        "book --out results/book.jsonl` and read them with grid.read_records")
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or "arch" not in r or "defense" not in r:
            raise UserError(f"record {i} is not a grid record (no 'arch' or 'defense'): pass the "
                            "records of a grid results file")
    return records


def _choose(kind: str, value: str | None, available: Sequence[str], context: str) -> str:
    """``value`` if it is available; the only available one when ``value`` is None."""
    if value is None and len(available) == 1:
        return available[0]
    if value is None:
        raise UserError(f"several {kind}s{context}: pass one of {list(available)}")
    if value not in available:
        raise UserError(f"unknown {kind} {value!r}{context}: choose from {list(available)}")
    return value


def _select(frame: pd.DataFrame, arch: str, defense: str, parameter: str | None,
            dataset: str | None) -> pd.DataFrame:
    """The rows of one (arch, dataset, defence, parameter) selection, with clear errors."""
    arch = _choose("architecture", arch, list(frame["arch"].unique()), " in these records")
    part = frame[frame["arch"] == arch]
    dataset = _choose("dataset", dataset, list(part["dataset"].unique()), f" for {arch}")
    part = part[part["dataset"] == dataset]
    defense = _choose("defence", defense, list(part["defense"].unique()), f" for {arch} on {dataset}")
    part = part[part["defense"] == defense]
    parameter = _choose("parameter", parameter, list(part["parameter"].unique()), f" for {arch} with {defense}")
    return part[part["parameter"] == parameter]


# --------------------------------------------------------------------------- ROC figures


def _roc_on_grid(roc: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The TPR of a stored compact ROC at each rate of ``ROC_FPR_GRID`` (step rule, no interpolation)."""
    fpr, tpr = np.asarray(roc["fpr"], dtype=float), np.asarray(roc["tpr"], dtype=float)
    last = np.searchsorted(fpr, np.asarray(ROC_FPR_GRID) + 1e-12, side="right") - 1
    return np.where(last >= 0, tpr[np.maximum(last, 0)], 0.0)


def _mean_roc(rocs: Sequence[Mapping[str, Sequence[float]]]) -> np.ndarray:
    return np.mean([_roc_on_grid(r) for r in rocs], axis=0)


def _draw_roc(ax: plt.Axes, tpr: np.ndarray, **style: Any) -> None:
    fpr = np.asarray(ROC_FPR_GRID)
    keep = fpr >= _FLOOR
    ax.step(fpr[keep], np.clip(tpr[keep], _FLOOR, 1), where="post", **style)


def _log_axes(ax: plt.Axes) -> None:
    roc_axes(ax, floor=_FLOOR, top=1.05)


def _no_roc_text(what: str) -> str:
    return (f"No ROC curve stored for {what}:\nthese records predate it; re-run the grid\n"
            "(python -m mcmia_helpers grid ...) to store one.")


def _message(ax: plt.Axes, text: str) -> None:
    """A panel that says what cannot be drawn, instead of an empty plot."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def plot_roc_for(records: Sequence[Mapping[str, Any]], arch: str, defense: str, parameter: str | None,
                 attack: str, *, dataset: str | None = None) -> plt.Figure:
    """ROC of ``attack`` against one selection: one line per seed, on log axes with the chance
    diagonal, plus the mean ROC over seeds of the undefended baseline of the same architecture
    and data (dashed; absent when the selection is the baseline or it was not run). Records
    without a stored ROC give a figure that says so."""
    records = _check_records(records)
    frame = results_frame(records)
    part = _select(frame, arch, defense, parameter, dataset)
    arch, dataset, parameter = part["arch"].iloc[0], part["dataset"].iloc[0], part["parameter"].iloc[0]
    used = part["dataset_used"].iloc[0]
    _choose("attack", attack, list(part["attack"].unique()), f" for {arch} with {defense}")
    chosen = _matching(records, arch, dataset, defense, parameter)
    name = f"{DEFENCE_LABELS.get(defense, defense)}" + ("" if parameter == "none" else f" ({parameter})")
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    with_roc = [r for r in chosen if "roc" in r["attacks"].get(attack, {})]
    if not with_roc:
        _message(ax, _no_roc_text(f"{attack} on {arch}, {name}"))
        return fig
    for r in sorted(with_roc, key=lambda r: r.get("seed", 0)):
        _draw_roc(ax, _roc_on_grid(r["attacks"][attack]["roc"]), lw=1.5, label=f"{name}, seed {r.get('seed', 0)}")
    if defense != "none":
        base = [r["attacks"][attack]["roc"] for r in _matching(records, arch, dataset, "none", None)
                if "roc" in r["attacks"].get(attack, {})]
        if base:
            _draw_roc(ax, _mean_roc(base), color="black", ls=":", lw=2,
                      label=f"baseline (mean of {len(base)} seed{'s' * (len(base) > 1)})")
    _log_axes(ax)
    ax.set_title(f"{attack} attack on {arch} ({_data_name(dataset, used)})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _dataset(record: Mapping[str, Any]) -> str:
    """The grid's name of a record's dataset (the frame's ``dataset``)."""
    return record.get("dataset_requested", record.get("dataset_used", "?"))


def _data_name(dataset: str, used: str) -> str:
    return dataset if dataset == used else f"{used}, stand-in for {dataset}"


def _matching(records, arch: str, dataset: str, defense: str, parameter: str | None) -> list:
    return [r for r in records if r["arch"] == arch and _dataset(r) == dataset and r["defense"] == defense
            and (parameter is None or parameter_label(r.get("params", {})) == parameter)]


def static_overview(records: Sequence[Mapping[str, Any]], attack: str, kind: str = "auto") -> plt.Figure:
    """One figure over all records for the built book: one panel per architecture (and data),
    two panels a row.

    ``kind="roc"``: the ROC of ``attack`` for every defence and parameter, averaged over seeds,
    on log axes. ``kind="auc"``: ``attack``'s AUC against test accuracy, one point per defence
    and parameter (mean over seeds, with Student-t 95% intervals where there are several seeds).
    ``"auto"`` draws ROCs when the records carry them, AUC otherwise.
    """
    records = _check_records(records)
    frame = results_frame(records)
    _choose("attack", attack, list(frame["attack"].unique()), " in these records")
    if kind == "auto":
        ran = [r["attacks"][attack] for r in records if attack in r.get("attacks", {})]
        kind = "roc" if all("roc" in m for m in ran) else "auc"
    if kind not in ("roc", "auc"):
        raise UserError(f"kind {kind!r} is not a kind of overview: use 'roc', 'auc' or 'auto'")
    panels = list(frame[["arch", "dataset", "dataset_used"]].drop_duplicates(["arch", "dataset"])
                  .itertuples(index=False, name=None))
    ncols = min(2, len(panels))  # two panels a row stay legible at the book's page width
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 4.2 * nrows), squeeze=False,
                             sharex=kind == "roc", sharey=kind == "roc", layout="constrained")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    groups = list(frame[["defense", "parameter"]].drop_duplicates().itertuples(index=False, name=None))
    colours = dict(zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"] * len(groups)))
    for ax, (arch, dataset, used) in zip(axes.ravel(), panels):
        drawn = 0
        for defense, parameter in groups:
            label = DEFENCE_LABELS.get(defense, defense) + ("" if parameter == "none" else f" {parameter}")
            if kind == "roc":
                rocs = [r["attacks"][attack]["roc"] for r in _matching(records, arch, dataset, defense, parameter)
                        if "roc" in r["attacks"].get(attack, {})]
                if rocs:
                    _draw_roc(ax, _mean_roc(rocs), color=colours[(defense, parameter)], lw=1.5, label=label)
                    drawn += 1
            else:
                part = frame[(frame.arch == arch) & (frame.dataset == dataset) & (frame.defense == defense)
                             & (frame.parameter == parameter) & (frame.attack == attack)]
                if len(part):
                    x, y = (_mean_and_half(part[c]) for c in ("auc", "test_acc"))
                    ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt="o", capsize=3,
                                color=colours[(defense, parameter)], label=label)
                    drawn += 1
        if not drawn:
            _message(ax, _no_roc_text(f"{attack} on {arch}") if kind == "roc" else f"{attack} did not run on {arch}")
            continue
        if kind == "roc":
            _log_axes(ax)
        else:
            ax.axvline(0.5, ls="--", color="grey", lw=1)
            ax.set_xlabel(f"{attack} attack AUC")
            ax.set_ylabel("test accuracy")
        ax.set_title(f"{arch}\n{_data_name(dataset, used)}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left" if kind == "roc" else "best")
    if kind == "roc":  # shared log axes: label only the outer ones
        for ax in axes.ravel()[:len(panels)]:
            ax.label_outer()
    return fig


def _mean_and_half(values: pd.Series) -> tuple[float, float]:
    """Mean and Student-t 95% half-width over seeds (0 for a single value)."""
    mean, lo, hi = mean_interval(values.to_numpy(dtype=float))
    return mean, (hi - lo) / 2


# --------------------------------------------------------------------------- the widget


def _figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)  # never left for the inline backend to show again in a later cell
    return buffer.getvalue()


def explorer(records: Sequence[Mapping[str, Any]], attack: str | None = None) -> "ipywidgets.VBox":
    """An ipywidgets explorer of grid records: dropdowns for architecture, dataset, defence,
    parameter and attack (each one's options follow the choices before it), and below them the
    :func:`format_summary` table of the selection and its :func:`plot_roc_for` figure, redrawn on
    every change. ``attack`` is the attack shown first (default: ``loss`` where it ran). Needs a
    live kernel (Jupyter, Colab); the built book shows :func:`static_overview` instead.

    Returns an ``ipywidgets.VBox`` with two extra attributes: ``dropdowns`` (``{"arch",
    "dataset", "defense", "parameter", "attack"}`` -> ``Dropdown``) and ``output`` (the
    ``Output`` that holds the table and figure).
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        raise UserError("the results explorer needs ipywidgets: pip install ipywidgets "
                        "(Jupyter and Colab have it)") from None
    records = _check_records(records)
    frame = results_frame(records)
    if attack is not None:
        _choose("attack", attack, list(frame["attack"].unique()), " in these records")
    preferred = {"attack": attack or "loss"}
    names = ("arch", "dataset", "defense", "parameter", "attack")
    descriptions = ("architecture", "data", "defence", "parameter", "attack")
    dropdowns = {n: widgets.Dropdown(description=d, layout=widgets.Layout(width="auto"))
                 for n, d in zip(names, descriptions)}
    output = widgets.Output()
    state = {"busy": False}

    def options(name: str) -> list[tuple[str, str]]:
        """``(label, value)`` pairs of ``name`` given the choices before it (names = frame columns)."""
        part = frame
        for earlier in names:
            if earlier == name:
                values = list(part[name].unique())
                if name == "defense":
                    order = list(DEFENCE_LABELS)
                    values.sort(key=lambda v: order.index(v) if v in order else len(order))
                    return [(DEFENCE_LABELS.get(v, v), v) for v in values]
                if name == "dataset":
                    used = dict(zip(part["dataset"], part["dataset_used"]))
                    return [(_data_name(v, used[v]), v) for v in values]
                return [(v, v) for v in values]
            part = part[part[earlier] == dropdowns[earlier].value]
        raise KeyError(name)

    def refresh(start: int) -> None:
        state["busy"] = True
        try:
            for name in names[start:]:
                old = dropdowns[name].value
                new = options(name)
                dropdowns[name].options = new
                values = [v for _, v in new]
                if old not in values:
                    old = preferred[name] if preferred.get(name) in values else values[0]
                dropdowns[name].value = old
        finally:
            state["busy"] = False
        render()

    def render() -> None:
        sel = {n: d.value for n, d in dropdowns.items()}
        try:
            table = format_summary(summary(frame, sel["arch"], sel["defense"], sel["parameter"],
                                           dataset=sel["dataset"]))
            fig = plot_roc_for(records, sel["arch"], sel["defense"], sel["parameter"], sel["attack"],
                               dataset=sel["dataset"])
            items = [_heading(sel, dropdowns["dataset"].label, table), table, _image(_figure_png(fig))]
        except UserError as exc:
            items = [f"Cannot show this selection: {exc}"]
        _show(output, items)

    for i, name in enumerate(names):
        def on_change(change: dict, start: int = i + 1) -> None:
            if not state["busy"] and change["name"] == "value":
                refresh(start)
        dropdowns[name].observe(on_change, names="value")
    refresh(0)
    box = widgets.VBox([widgets.HBox(list(dropdowns.values())), output])
    box.dropdowns, box.output = dropdowns, output
    return box


def _heading(sel: Mapping[str, str], data: str, table: pd.DataFrame) -> Any:
    from IPython.display import HTML

    n = int(table["seeds"].max())
    what = DEFENCE_LABELS.get(sel["defense"], sel["defense"])
    if sel["parameter"] != "none":
        what += f" ({sel['parameter']})"
    return HTML(f"<b>{sel['arch']}</b> on {data}, {what}: mean over {n} seed{'s' * (n > 1)} "
                "[95% interval] per attack")


def _image(png: bytes) -> Any:
    from IPython.display import Image

    return Image(data=png, format="png")


def _show(output: "ipywidgets.Output", items: Sequence[Any]) -> None:
    """Replace what ``output`` shows. In a kernel (Jupyter, Colab) through the output's context
    (what every frontend renders); without one (tests, scripts) by setting its ``outputs``."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import clear_output, display

        with output:
            clear_output(wait=True)
            for item in items:
                display(item)
        return
    output.outputs = ()
    for item in items:
        if isinstance(item, str):
            output.append_stdout(item + "\n")
        else:
            output.append_display_data(item)
