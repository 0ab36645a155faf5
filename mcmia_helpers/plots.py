"""Figures the chapters share: example images, split balance, training curves, ROC curves.

Every function returns the matplotlib ``Figure`` (so the book can caption it) and draws with
one seaborn theme, set by :func:`use_book_style`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
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
             log: bool = True) -> plt.Figure:
    """ROC curves ``{name: (fpr, tpr)}`` on log-log axes (the low-FPR regime is what matters)."""
    fig, ax = plt.subplots(figsize=(5.0, 4.6))
    floor = 1e-4
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.clip(fpr, floor, 1), np.clip(tpr, floor, 1), label=name)
    roc_axes(ax, floor=floor if log else None)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def roc_axes(ax: plt.Axes, floor: float | None = 1e-4, top: float = 1.0) -> None:
    """Label ROC axes and draw the chance diagonal; log-log from ``floor`` (``None``: linear)."""
    grid = np.logspace(np.log10(floor), 0, 50) if floor else np.linspace(0, 1, 50)
    ax.plot(grid, grid, ls="--", color="grey", lw=1, label="chance")
    if floor:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, top)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")


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
