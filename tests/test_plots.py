"""The shared figures of :mod:`mcmia_helpers.plots` (chapters 2-4 and those that reuse them)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mcmia_helpers import plots  # noqa: E402
from mcmia_helpers.models import LeNet5  # noqa: E402


def _shaded(ax):
    return [p for p in ax.patches if p.get_label() == plots.UNRESOLVED_LABEL]


def test_roc_axes_keeps_its_old_signature():
    fig, ax = plt.subplots()
    plots.roc_axes(ax)
    plots.roc_axes(ax, 1e-5, 1.05)
    assert ax.get_xscale() == "log" and not _shaded(ax)
    plt.close(fig)


def test_roc_axes_shades_what_the_nonmembers_cannot_resolve():
    fig, ax = plt.subplots()
    plots.roc_axes(ax, nonmembers=1000)
    (band,) = _shaded(ax)
    left, right = band.get_x(), band.get_x() + band.get_width()
    assert np.isclose(left, 1e-4) and np.isclose(right, 1e-3)
    assert plots.UNRESOLVED_LABEL in ax.get_legend_handles_labels()[1]
    with pytest.raises(ValueError):
        plots.roc_axes(ax, nonmembers=0)
    plt.close(fig)


def test_plot_roc_passes_nonmembers_on():
    fpr = np.array([1e-4, 1e-3, 1e-2, 1.0])
    fig = plots.plot_roc({"a": (fpr, fpr)}, nonmembers=500)
    assert _shaded(fig.axes[0])
    plt.close(fig)
    fig = plots.plot_roc({"a": (fpr, fpr)})
    assert not _shaded(fig.axes[0])
    plt.close(fig)


def test_layer_labels_are_plain():
    labels = plots.layer_labels(LeNet5(10, 1, 28, 1.0))
    assert list(labels.values()) == ["conv 1", "conv 2", "fully connected 1",
                                     "fully connected 2", "fully connected 3"]
    assert labels["features.0"] == "conv 1"


def test_sweep_panels_join_points_in_order_and_widen_small_ranges():
    frame = pd.DataFrame({"x": [0.9, 0.0, 0.5], "y": [0.801, 0.800, 0.803], "g": "a"})
    fig = plots.sweep_panels(frame, "x", [{"y": "y", "label": "y", "min_span": 0.1}],
                             hue="g")
    ax = fig.axes[0]
    line = ax.lines[0]
    assert list(line.get_xdata()) == [0.0, 0.5, 0.9]
    low, high = ax.get_ylim()
    assert high - low >= 0.1 - 1e-12
    plt.close(fig)


def test_dp_sgd_step_noise_is_per_coordinate():
    rng = np.random.default_rng(0)
    d, sigma, clip = 10_000, 2.0, 1.0
    norms = rng.uniform(0.5, 20, size=64)
    clipped_sum = rng.normal(0, 0.01, size=d)
    fig = plots.dp_sgd_step(norms, clipped_sum, clip, sigma)
    bars = fig.axes[2].patches
    noise_norm = bars[1].get_height()
    assert noise_norm == pytest.approx(sigma * clip * np.sqrt(d), rel=0.05)
    assert str(int((norms > clip).sum())) in fig.axes[0].get_title()
    plt.close(fig)
