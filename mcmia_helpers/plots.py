"""Figures the chapters share: example images, split balance, training curves, ROC curves.

Every function returns the matplotlib ``Figure`` (so the book can caption it) and draws with
one seaborn theme, set by :func:`use_book_style`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib import ticker
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from mcmia_helpers.data import DatasetBundle, MIASplit


def use_book_style() -> None:
    """The one plotting style of the book (seaborn whitegrid, readable sizes)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "figure.autolayout": True})


def panels(n: int, ncols: int = 2, size: tuple[float, float] = (5.0, 3.5)
           ) -> tuple[plt.Figure, list[plt.Axes]]:
    """A figure of ``n`` panels, at most ``ncols`` (default two) to a row, each ``size`` inches.

    Two panels to a row keep tick labels and legends legible at the book's page width; unused
    cells of the last row are hidden. Returns the figure and the ``n`` axes in reading order.
    """
    nrows = -(-n // ncols)
    cols = min(ncols, n)
    fig, grid = plt.subplots(nrows, cols, figsize=(size[0] * cols, size[1] * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def show_images(bundle: DatasetBundle, indices: Sequence[int], ncols: int = 8,
                title: str | None = None) -> plt.Figure:
    """A grid of images with their labels (grey or RGB)."""
    indices = list(indices)
    nrows = int(np.ceil(len(indices) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.5 * nrows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), indices):
        img = bundle.images[i].permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(str(int(bundle.labels[i])), fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_class_balance(bundle: DatasetBundle, split: MIASplit) -> plt.Figure:
    """Per-class counts of every split part: members and non-members should look alike."""
    rows = []
    for part, idx in split.parts().items():
        counts = torch.bincount(bundle.labels[idx], minlength=bundle.num_classes)
        rows += [{"part": part, "class": c, "fraction": float(n) / max(1, len(idx))}
                 for c, n in enumerate(counts.tolist())]
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    sns.barplot(frame, x="class", y="fraction", hue="part", ax=ax)
    ax.set_ylabel("fraction of the part")
    ax.legend(ncols=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.2))
    return fig


def plot_history(history: Sequence[Mapping[str, float]], keys: Iterable[str] = ("loss", "acc"),
                 title: str | None = None) -> plt.Figure:
    """Per-epoch curves of a training history (one panel per key)."""
    keys = [k for k in keys if history and k in history[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.0), squeeze=False)
    epochs = [row["epoch"] + 1 for row in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [row[key] for row in history], marker=".")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
    if title:
        fig.suptitle(title)
    return fig


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str | None = None,
             log: bool = True, nonmembers: int | None = None) -> plt.Figure:
    """ROC curves ``{name: (fpr, tpr)}`` on log-log axes (the low-FPR regime is what matters).

    ``nonmembers``: how many non-member scores the curves rest on; the false-positive rates
    below ``1 / nonmembers`` are shaded as not resolved (see :func:`roc_axes`)."""
    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    floor = 1e-4
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.clip(fpr, floor, 1), np.clip(tpr, floor, 1), label=name)
    roc_axes(ax, floor=floor if log else None, nonmembers=nonmembers)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


#: The label of the shaded region of an ROC figure that the non-members cannot resolve.
UNRESOLVED_LABEL = "below 1/non-members: not resolved"


def roc_axes(ax: plt.Axes, floor: float | None = 1e-4, top: float = 1.0,
             nonmembers: int | None = None) -> None:
    """Label ROC axes and draw the chance diagonal; log-log from ``floor`` (``None``: linear).

    ``nonmembers`` (chapter 2 on): the number of non-member scores behind the curves. A
    false-positive rate below ``1 / nonmembers`` is less than one false positive, so the curve
    there is not measured: that region is shaded light grey and labelled
    :data:`UNRESOLVED_LABEL` (it shows in the legend when the caller draws one)."""
    grid = np.logspace(np.log10(floor), 0, 50) if floor else np.linspace(0, 1, 50)
    ax.plot(grid, grid, ls="--", color="grey", lw=1, label="chance")
    if floor:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, top)
    if nonmembers is not None:
        if nonmembers < 1:
            raise ValueError(f"nonmembers must be a positive count (got {nonmembers})")
        ax.axvspan(floor or 0.0, 1.0 / nonmembers, color="0.85", alpha=0.6, lw=0, zorder=0,
                   label=UNRESOLVED_LABEL)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")


def roc_of(metrics: Mapping[str, object], floor: float | None = 1e-4
           ) -> tuple[np.ndarray, np.ndarray]:
    """The stored compact ROC ``(fpr, tpr)`` of one attack's metrics (a record's
    ``record["attacks"][name]``, see :func:`mcmia_helpers.metrics.attack_metrics`), clipped
    below at ``floor`` so that it can be drawn on the log axes of :func:`roc_axes`."""
    roc = metrics["roc"]
    fpr, tpr = np.asarray(roc["fpr"], dtype=float), np.asarray(roc["tpr"], dtype=float)
    return (fpr, tpr) if floor is None else (np.clip(fpr, floor, 1), np.clip(tpr, floor, 1))


def layer_labels(model: torch.nn.Module) -> dict[str, str]:
    """Plain names of a model's convolution and linear layers, in order (chapter 2):
    ``{"features.0": "conv 1", ..., "classifier.1": "fully connected 1", ...}``."""
    out, counts = {}, {"conv": 0, "fully connected": 0}
    for name, module in model.named_modules():
        kind = ("conv" if isinstance(module, torch.nn.Conv2d)
                else "fully connected" if isinstance(module, torch.nn.Linear) else None)
        if kind:
            counts[kind] += 1
            out[name] = f"{kind} {counts[kind]}"
    return out


def widen(ax: plt.Axes, min_span: float, axis: str = "y", low: float | None = None,
          high: float | None = None) -> None:
    """Widen an axis to at least ``min_span`` around its data (so that a half-point change does
    not fill the panel), clipped to ``[low, high]`` where given."""
    get, put = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    a, b = get()
    if b - a < min_span:
        mid = (a + b) / 2
        a, b = mid - min_span / 2, mid + min_span / 2
        if low is not None and a < low:
            a, b = low, low + min_span
        if high is not None and b > high:
            a, b = high - min_span, high
        put(a, b)


def sweep_panels(frame: pd.DataFrame, x: str, panels_spec: Sequence[Mapping[str, object]],
                 hue: str | None = None, xlabel: str | None = None, log_x: bool = False,
                 baseline: Mapping[str, float] | None = None,
                 size: tuple[float, float] = (5.0, 3.4)) -> plt.Figure:
    """Panels of metrics against ``x``, two to a row (chapters 2-4's sweeps).

    ``panels_spec``: one dict per panel with ``"y"`` (column), ``"label"`` (axis label) and
    optionally ``"lo"``/``"hi"`` (interval columns, drawn as error bars), ``"scale"`` (a factor,
    e.g. 100 for percentage points), ``"min_span"`` (smallest y range, see :func:`widen`).
    Points are joined in increasing ``x``, one line per ``hue`` value. ``baseline``: a value per
    ``y`` column drawn as a dashed grey line (e.g. the undefended model); with ``log_x`` the
    ticks sit at the data's own ``x`` values, so none overlap."""
    fig, axes = panels(len(panels_spec), ncols=2, size=size)
    groups = frame.groupby(hue, sort=False) if hue else [(None, frame)]
    for ax, spec in zip(axes, panels_spec):
        y, factor = str(spec["y"]), float(spec.get("scale", 1.0))
        for name, group in groups:
            g = group.sort_values(x)
            yerr = None
            if spec.get("lo") and spec.get("hi"):
                yerr = np.vstack([g[y] - g[spec["lo"]], g[spec["hi"]] - g[y]]) * factor
            ax.errorbar(g[x], g[y] * factor, yerr=yerr, marker="o", capsize=3,
                        label=None if name is None else str(name))
        if baseline and y in baseline:
            ax.axhline(baseline[y] * factor, ls="--", color="grey", lw=1, label="no defence")
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(str(spec["label"]))
        if log_x:
            ax.set_xscale("log")
            ticks = sorted(frame[x].unique())
            ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        if spec.get("min_span"):
            widen(ax, float(spec["min_span"]))
        if hue or baseline:
            ax.legend(fontsize=8)
    return fig


def defence_scatter(frame: pd.DataFrame, x: str, y: str, label: str, ax: plt.Axes,
                    xerr: tuple[str, str] | None = None, x_factor: float = 1.0,
                    y_factor: float = 1.0, marker_of: Mapping[str, str] | None = None) -> None:
    """One point per row (a defence) of ``frame``, ``x`` against ``y``, each in its own colour
    and named in a legend rather than by a text label beside it (labels of close points
    overlap). ``xerr``: the (low, high) columns of an interval on ``x``; ``marker_of``: a
    marker per label (e.g. squares for DP-SGD)."""
    for i, (_, row) in enumerate(frame.iterrows()):
        err = None
        if xerr is not None:
            err = [[(row[x] - row[xerr[0]]) * x_factor], [(row[xerr[1]] - row[x]) * x_factor]]
        ax.errorbar(row[x] * x_factor, row[y] * y_factor, xerr=err, capsize=3, ms=8,
                    fmt=(marker_of or {}).get(row[label], "o"), color=f"C{i % 10}",
                    label=str(row[label]))


def dp_sgd_step(norms: np.ndarray, clipped_sum: np.ndarray, clip: float, sigma: float,
                sigmas: Mapping[str, float] | None = None, seed: int = 0) -> plt.Figure:
    """DP-SGD's step in one picture (chapter 4), from real per-example gradients.

    ``norms``: each example's gradient norm; ``clipped_sum``: the sum of the examples' clipped
    gradients, flattened (``d`` coordinates); ``clip``: the clip norm ``C``; ``sigma``: the noise
    multiplier drawn; ``sigmas``: the noise multiplier of each run to compare (label -> sigma).
    Top left: the norms before and after clipping (log axis). Top right: the coordinates of the
    clipped sum against the Gaussian noise ``N(0, sigma^2 C^2)`` that DP-SGD adds to *every*
    coordinate. Bottom left: the norm of the clipped sum, of the noise (about
    ``sigma C sqrt(d)``) and of their sum. Bottom right: the noise norm ``sigma C sqrt(d)`` of
    each run of ``sigmas`` against the clipped sum's norm."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma * clip, size=clipped_sum.shape)
    fig, axes = panels(4, ncols=2, size=(5.2, 3.6))
    clipped = np.minimum(norms, clip)
    edges = np.logspace(np.log10(min(clipped.min(), norms.min()) * 0.8),
                        np.log10(norms.max() * 1.25), 30)
    axes[0].hist(norms, bins=edges, alpha=0.7, label="before clipping")
    axes[0].hist(clipped, bins=edges, alpha=0.7, label="after clipping")
    axes[0].axvline(clip, color="C3", ls="--", label=f"clip norm C = {clip:g}")
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[0].xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes[0].xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].set_xlabel("per-example gradient norm (log scale)")
    axes[0].set_ylabel("examples")
    axes[0].set_title(f"1. clip: {int((norms > clip).sum())} of {len(norms)} exceed C")
    axes[0].legend(fontsize=8)
    span = max(np.abs(noise).max(), np.abs(clipped_sum).max())
    bins = np.linspace(-span, span, 60)
    axes[1].hist(noise, bins=bins, alpha=0.6, color="C2", label=f"noise, sd {sigma * clip:.2f}")
    axes[1].hist(clipped_sum, bins=bins, alpha=0.7, color="C1", label="sum of clipped gradients")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("value of one coordinate")
    axes[1].set_ylabel("coordinates (log scale)")
    axes[1].set_title(f"2. noise on each of d = {clipped_sum.size:,} coordinates")
    axes[1].legend(fontsize=8)
    signal = float(np.linalg.norm(clipped_sum))
    values = [signal, np.linalg.norm(noise), np.linalg.norm(clipped_sum + noise)]
    bars = axes[2].bar(["clipped sum", "noise", "noisy sum"], values, color=["C1", "C2", "C0"])
    axes[2].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[2].set_ylabel("norm")
    axes[2].set_title(f"3. norms at sigma = {sigma:.2f}")
    runs = dict(sigmas or {f"sigma = {sigma:.2f}": sigma})
    expected = [s * clip * np.sqrt(clipped_sum.size) for s in runs.values()]
    bars = axes[3].bar(list(runs), expected, color="C2", label="noise norm, sigma C sqrt(d)")
    axes[3].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[3].axhline(signal, color="C1", ls="--", label="clipped sum")
    axes[3].set_ylabel("norm")
    axes[3].set_title("4. noise norm of each run")
    axes[3].legend(fontsize=8)
    return fig


def plot_score_histogram(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                         title: str | None = None, bins: int = 50) -> plt.Figure:
    """Histograms of an attack's scores on members vs non-members."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    edges = np.histogram_bin_edges(np.concatenate([member_scores, nonmember_scores]), bins=bins)
    ax.hist(nonmember_scores, bins=edges, alpha=0.6, label="non-members", density=True)
    ax.hist(member_scores, bins=edges, alpha=0.6, label="members", density=True)
    ax.set_xlabel("membership score")
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def plot_privacy_utility(frame: pd.DataFrame, x: str, y: str, hue: str, label: str | None = None,
                         ax: plt.Axes | None = None) -> plt.Figure:
    """A privacy-utility scatter: e.g. attack AUC (x) against test accuracy (y), one point per run."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4.0))
    else:
        fig = ax.figure
    sns.scatterplot(frame, x=x, y=y, hue=hue, s=70, ax=ax)
    if label is not None:
        for _, row in frame.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    return fig
