"""The results explorer: frame, intervals over seeds, ROC figures and the widget, on records
synthesised through ``metrics.attack_metrics`` (no training) and a few real stored records."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from mcmia_helpers import explorer as ex
from mcmia_helpers.errors import UserError
from mcmia_helpers.metrics import attack_metrics

STORED = Path(__file__).resolve().parents[1] / "results" / "book.jsonl"
N = 400  # members and as many non-members per synthetic run


def _record(arch: str, defense: str, params: dict, seed: int, shift: float, test_acc: float, *,
            dataset: str = "mnist", used: str = "fashion-mnist", attacks=("loss", "confidence"),
            roc: bool = True) -> dict:
    """A dict shaped like a grid record; member scores are shifted by ``shift`` (known AUC)."""
    rng = np.random.default_rng(1000 * seed + int(100 * shift) + len(arch) + len(defense))
    labels = np.r_[np.ones(N), np.zeros(N)].astype(int)
    metrics = {}
    for name in attacks:
        m = attack_metrics(labels, rng.normal(size=2 * N) + shift * labels, n_bootstrap=20, seed=seed)
        if not roc:
            del m["roc"]
        metrics[name] = m
    record = {"arch": arch, "defense": defense, "params": params, "seed": seed, "test_acc": test_acc,
              "dataset_requested": dataset, "dataset_used": used, "attacks": metrics}
    if "sparsity" in params:
        record["compression_ratio"] = 1 / (1 - params["sparsity"])
    if defense == "dp":
        record["epsilon"] = params["epsilon"] - 0.01
    return record


@pytest.fixture(scope="module")
def records() -> list[dict]:
    out = []
    for seed in range(3):
        out.append(_record("lenet5", "none", {}, seed, 1.0, 0.80 + 0.01 * seed))
        out.append(_record("lenet5", "prune", {"pruning": "admm", "sparsity": 0.9}, seed, 0.3, 0.79))
        out.append(_record("lenet5", "dp", {"epsilon": 8}, seed, 0.1, 0.60))
        out.append(_record("vgg16", "none", {}, seed, 1.5, 0.70, dataset="cifar10"))
    out.append(_record("lenet5", "minmax", {"lam": 1}, 0, 0.5, 0.75))
    out.append(_record("lenet5", "minmax", {"lam": 3}, 0, 0.4, 0.74))
    return out


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _lines(fig: plt.Figure, panel: int = 0) -> int:
    return len(fig.axes[panel].get_lines())


def test_parameter_labels() -> None:
    assert ex.parameter_label({"pruning": "admm", "sparsity": 0.9}) == "admm 90%"
    assert ex.parameter_label({"sparsity": 0.95, "lam": 3}) == "95% sparse, lam=3"
    assert ex.parameter_label({"lam": 1}) == "lam=1"
    assert ex.parameter_label({"epsilon": 8}) == "eps=8"
    assert ex.parameter_label({"epsilon": 0.5, "clip": 1.0}) == "eps=0.5, clip=1.0"
    assert ex.parameter_label({}) == "none"


def test_results_frame(records) -> None:
    frame = ex.results_frame(records)
    assert len(frame) == 2 * len(records)  # one row per record and attack
    for column in ("arch", "dataset", "dataset_used", "defense", "parameter", "seed", "test_acc", "attack",
                   "accuracy", "auc", "tpr@1%", "tpr@0.1%", "compression", "epsilon"):
        assert column in frame.columns
    row = frame[(frame.defense == "prune") & (frame.seed == 1) & (frame.attack == "loss")].iloc[0]
    source = records[5]["attacks"]["loss"]
    assert (row.parameter, row.auc, row["tpr@1%"]) == ("admm 90%", source["auc"], source["tpr_at_1pct_fpr"])
    assert (row.auc_lo, row.auc_hi) == tuple(source["ci95"]["auc"])
    assert row.compression == pytest.approx(10.0)
    baseline = frame[frame.defense == "none"]
    assert (baseline.compression == 1.0).all() and np.isinf(baseline.epsilon).all()
    assert set(frame[frame.defense == "dp"].epsilon) == {7.99}
    assert set(frame.dataset) == {"mnist", "cifar10"} and set(frame.dataset_used) == {"fashion-mnist"}


def test_summary_over_seeds(records) -> None:
    frame = ex.results_frame(records)
    table = ex.summary(frame, "lenet5", "none")
    assert list(table.index) == ["loss", "confidence"] and (table.seeds == 3).all()
    accs = np.array([0.80, 0.81, 0.82])
    half = stats.t.ppf(0.975, 2) * accs.std(ddof=1) / np.sqrt(3)
    row = table.loc["loss"]
    assert row.test_acc == pytest.approx(accs.mean())
    assert (row.test_acc_lo, row.test_acc_hi) == pytest.approx((accs.mean() - half, accs.mean() + half))
    for metric in ("test_acc", "accuracy", "auc", "tpr@1%", "tpr@0.1%"):
        assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"]
    assert row.interval == "t over seeds"
    # a shift of 1 standard deviation gives AUC Phi(1/sqrt 2) = 0.76; 0.3 gives 0.58
    assert row.auc == pytest.approx(stats.norm.cdf(1 / np.sqrt(2)), abs=0.04)
    pruned = ex.summary(frame, "lenet5", "prune", "admm 90%").loc["loss"]
    assert pruned.auc == pytest.approx(stats.norm.cdf(0.3 / np.sqrt(2)), abs=0.04)
    assert pruned.compression == pytest.approx(10.0)


def test_intervals_shrink_with_seeds_and_single_runs_use_the_bootstrap() -> None:
    def widths(n_seeds: int) -> float:
        runs = [_record("lenet5", "none", {}, s, 1.0, 0.8 + 0.02 * (-1) ** s, attacks=("loss",))
                for s in range(n_seeds)]
        row = ex.summary(ex.results_frame(runs), "lenet5", "none").loc["loss"]
        return row.test_acc_hi - row.test_acc_lo

    assert widths(10) < widths(4) < widths(2)
    single = _record("lenet5", "none", {}, 0, 1.0, 0.8, attacks=("loss",))
    row = ex.summary(ex.results_frame([single]), "lenet5", "none").loc["loss"]
    assert row.interval == "bootstrap (1 seed)"
    assert (row.auc_lo, row.auc_hi) == tuple(single["attacks"]["loss"]["ci95"]["auc"])
    assert np.isnan(row.test_acc_lo)
    text = ex.format_summary(ex.summary(ex.results_frame([single]), "lenet5", "none"))
    assert text.loc["loss", "test_acc"] == "0.800" and text.loc["loss", "auc"].count("[") == 1
    assert text.loc["loss", "compression"] == "1.0x" and text.loc["loss", "epsilon"] == "-"


def test_clear_errors(records) -> None:
    frame = ex.results_frame(records)
    with pytest.raises(UserError, match="no records"):
        ex.results_frame([])
    with pytest.raises(UserError, match="not a grid record"):
        ex.results_frame([{"seed": 0}])
    with pytest.raises(UserError, match="unknown architecture 'alexnet'.*lenet5"):
        ex.summary(frame, "alexnet", "none")
    with pytest.raises(UserError, match="unknown defence 'dp' for vgg16.*'none'"):
        ex.summary(frame, "vgg16", "dp")
    with pytest.raises(UserError, match="several parameters.*lam=1.*lam=3"):
        ex.summary(frame, "lenet5", "minmax")
    with pytest.raises(UserError, match="unknown attack 'lira'"):
        ex.plot_roc_for(records, "lenet5", "none", None, "lira")
    with pytest.raises(UserError, match="unknown attack"):
        ex.static_overview(records, "lira")
    with pytest.raises(UserError, match="kind"):
        ex.static_overview(records, "loss", kind="bars")


def test_roc_figure_per_seed_with_baseline(records) -> None:
    fig = ex.plot_roc_for(records, "lenet5", "prune", "admm 90%", "loss")
    assert _lines(fig) == 3 + 1 + 1  # three seeds, the baseline's mean, chance
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels[-2].startswith("baseline") and fig.axes[0].get_xscale() == "log"
    assert _lines(ex.plot_roc_for(records, "lenet5", "none", None, "loss")) == 3 + 1  # no baseline twice
    assert _lines(ex.plot_roc_for(records, "lenet5", "minmax", "lam=3", "loss")) == 1 + 1 + 1
    # the plotted steps are the stored ROC: at FPR 1% the TPR of the record
    seed0 = fig.axes[0].get_lines()[0]
    x, y = seed0.get_data()
    assert y[list(x).index(0.01)] == pytest.approx(max(1e-4, records[1]["attacks"]["loss"]["tpr_at_1pct_fpr"]))


def test_records_without_roc_still_work() -> None:
    old = [_record("lenet5", d, {}, s, 0.5, 0.8, roc=False) for d in ("none", "minmax") for s in range(2)]
    assert len(ex.results_frame(old)) == 8
    fig = ex.plot_roc_for(old, "lenet5", "minmax", None, "loss")
    assert _lines(fig) == 0 and "No ROC curve" in fig.axes[0].texts[0].get_text()
    overview = ex.static_overview(old, "loss")  # auto: AUC against accuracy instead
    assert len(overview.axes[0].containers) == 2 and overview.axes[0].get_xscale() == "linear"
    widget = ex.explorer(old)
    kinds = [set(o["data"]) for o in widget.output.outputs]
    assert any("image/png" in k for k in kinds) and any("text/html" in k for k in kinds)


def test_static_overview_panels(records) -> None:
    fig = ex.static_overview(records, "loss")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["lenet5", "vgg16"]
    assert _lines(fig, 0) == 5 + 1 and _lines(fig, 1) == 1 + 1  # defence/parameter curves + chance
    auc = ex.static_overview(records, "confidence", kind="auc")
    assert len(auc.axes[0].containers) == 5 and len(auc.axes[1].containers) == 1


def test_widget_menus_follow_the_choices_and_rerender(records) -> None:
    widget = ex.explorer(records)
    dd, out = widget.dropdowns, widget.output
    assert [dd[k].value for k in ("arch", "dataset", "defense", "parameter", "attack")] == \
        ["lenet5", "mnist", "none", "none", "loss"]
    assert [v for _, v in dd["defense"].options] == ["none", "prune", "minmax", "dp"]
    assert dict(dd["dataset"].options) == {"fashion-mnist, stand-in for mnist": "mnist"}
    first = out.outputs
    assert len(first) == 3 and "lenet5" in first[0]["data"]["text/html"]
    assert "0.810 [" in first[1]["data"]["text/html"]  # test accuracy: mean [interval]
    assert "image/png" in first[2]["data"]

    dd["arch"].value = "vgg16"
    assert [v for _, v in dd["defense"].options] == ["none"] and dd["dataset"].value == "cifar10"
    assert "vgg16" in out.outputs[0]["data"]["text/html"] and len(out.outputs) == 3
    dd["arch"].value = "lenet5"
    dd["defense"].value = "minmax"
    assert [v for _, v in dd["parameter"].options] == ["lam=1", "lam=3"]
    dd["parameter"].value = "lam=3"
    assert "lam=3" in out.outputs[0]["data"]["text/html"]
    before = out.outputs[2]["data"]["image/png"]
    dd["attack"].value = "confidence"
    assert out.outputs[2]["data"]["image/png"] != before and dd["parameter"].value == "lam=3"
    with pytest.raises(UserError, match="unknown attack"):
        ex.explorer(records, attack="lira")
    assert ex.explorer(records, attack="confidence").dropdowns["attack"].value == "confidence"


@pytest.mark.skipif(not STORED.exists(), reason="no stored book results")
def test_real_stored_records() -> None:
    with STORED.open() as handle:
        real = [json.loads(next(handle)) for _ in range(3)]  # the first cell's seeds
    frame = ex.results_frame(real)
    assert len(frame) == sum(len(r["attacks"]) for r in real)
    table = ex.summary(frame, real[0]["arch"], real[0]["defense"])
    assert (table.seeds == len({r["seed"] for r in real})).all()
    assert ((table.auc_lo <= table.auc) & (table.auc <= table.auc_hi)).all()
    if all("roc" in m for r in real for m in r["attacks"].values()):
        fig = ex.plot_roc_for(real, real[0]["arch"], real[0]["defense"], None, next(iter(real[0]["attacks"])))
        assert _lines(fig) == len(real) + 1
