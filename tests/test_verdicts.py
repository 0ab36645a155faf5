"""Chapter 6's verdict tables (mcmia_helpers.verdicts): the words follow the rule from every row,
the grid shows every reading, the replication check and the answer come from the rows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mcmia_helpers import evidence, verdicts  # noqa: E402
from mcmia_helpers.attacks.lira import lira_in_out_sets  # noqa: E402
from mcmia_helpers.errors import UserError  # noqa: E402
from mcmia_helpers.zoo.evaluate import ZooScores  # noqa: E402


def _row(comparison, attacker, examples, metric, change, low, high, family="F"):
    reading = evidence.reading(low, high, evidence.MARGINS[metric])
    return {"family": family, "comparison": comparison, "attacker": attacker,
            "examples": examples, "metric": metric, "change": change, "low": low, "high": high,
            "margin": evidence.MARGINS[metric], "reading": reading, "note": "", "targets": 16,
            "nonmembers": 20000}


def _table() -> pd.DataFrame:
    rows = []
    for attacker in ("aware", "unaware"):
        # ADMM minus dense: AUC higher on ordinary examples, TPR at 1% lower on canaries: mixed
        rows += [_row("ADMM 90% − dense", attacker, "ordinary", "auc", 0.02, 0.015, 0.025),
                 _row("ADMM 90% − dense", attacker, "ordinary", "tpr_at_1pct_fpr", 0.0, -0.004, 0.004),
                 _row("ADMM 90% − dense", attacker, "canaries", "tpr_at_1pct_fpr", -0.05, -0.08, -0.02)]
        # ADMM minus dense as long: everything inside the margins
        rows += [_row("ADMM 90% − dense, as long", attacker, "ordinary", "auc", 0.001, -0.004, 0.006),
                 _row("ADMM 90% − dense, as long", attacker, "canaries", "tpr_at_1pct_fpr", 0.001,
                      -0.005, 0.008)]
    rows.append({**_row("ADMM 90% − dense", "aware", "ordinary", "tpr_at_0_01pct_fpr", None, None,
                        None), "reading": "not resolved",
                 "note": "needs 100,000 non-members (20,000 here)"})
    return pd.DataFrame(rows)


def test_verdicts_follow_the_rule_from_every_metric() -> None:
    table = _table()
    v = verdicts.verdicts(table)
    assert v.loc[("F", "ADMM 90% − dense", "aware"), "verdict"] == "mixed"
    assert v.loc[("F", "ADMM 90% − dense, as long", "unaware"), "verdict"] == "equivalent"
    sentence = v.loc[("F", "ADMM 90% − dense", "aware"), "sentence"]
    assert "higher: AUC on ordinary" in sentence and "lower: TPR @ 1% FPR on canaries" in sentence
    assert "not read: TPR @ 0.01% FPR on ordinary" in sentence
    # one higher reading among equivalents is "leaks more", never "equivalent"
    planted = table.copy()
    planted.loc[3, ["change", "low", "high", "reading"]] = [0.03, 0.02, 0.04, "higher"]
    assert verdicts.verdicts(planted).loc[("F", "ADMM 90% − dense, as long", "aware"),
                                          "verdict"] == "leaks more"
    with pytest.raises(UserError):
        verdicts.verdicts(table.drop(columns=["reading"]))


def test_the_grid_shows_each_reading_and_the_verdict() -> None:
    table = _table()
    html = verdicts.reading_grid(table, verdicts.verdicts(table), "F").to_html()
    cells = html.split("<tbody>")[1]
    assert cells.count(">▲<") == 2 and cells.count(">▼<") == 2  # AUC up, canaries' TPR down (x2)
    assert ">nan<" not in cells
    assert "mixed" in html and "equivalent" in html and ">aware<" in html and ">unaware<" in html
    assert ">0.01%<" in html and ">ordinary<" in html and ">canaries<" in html
    numbers = verdicts.change_table(table, "F").to_html()
    assert "+0.020 [+0.015, +0.025] higher" in numbers
    assert "-5.00 [-8.00, -2.00] lower" in numbers  # points for rates
    assert "needs 100,000 non-members (20,000 here)" in numbers
    with pytest.raises(UserError):
        verdicts.reading_grid(table, verdicts.verdicts(table), "another family")


def test_answer_sentence_uses_the_words_of_each_family_and_attacker() -> None:
    words = {("A", "aware", "ADMM 90% − dense"): "mixed",
             ("A", "aware", "ADMM 90% − dense, as long"): "equivalent",
             ("A", "unaware", "ADMM 90% − dense"): "protects",
             ("A", "unaware", "ADMM 90% − dense, as long"): "inconclusive"}
    text = verdicts.answer_sentence(words, ["A", "B"])
    assert text == ("Against the defence-aware attacker, ADMM pruning to 90% reads: A: mixed against "
                    "dense, equivalent against dense trained as long. Against the paper's unaware "
                    "attacker, ADMM pruning to 90% reads: A: protects against dense, inconclusive "
                    "against dense trained as long.")
    with pytest.raises(UserError):
        verdicts.answer_sentence({}, ["A"])


def test_replication_compares_readings_cell_by_cell() -> None:
    first = _table()
    second = first.copy()
    second.loc[0, ["low", "high", "reading"]] = [-0.01, 0.03, "inconclusive"]  # one flips
    out = verdicts.replication_table(first, second)
    assert list(out["replicates"]).count("no") == 1
    assert list(out["replicates"]).count("not read") == 1  # the unresolved rate
    assert (out["replicates"] == "yes").sum() == len(first) - 2
    flipped = out.iloc[0]
    assert flipped["seed 0"].endswith("higher") and flipped["seed 1"].endswith("inconclusive")


def test_plot_changes_draws_the_margin_and_the_intervals() -> None:
    table = _table()
    fig = verdicts.plot_changes(table[table.attacker == "aware"],
                                ["ADMM 90% − dense", "ADMM 90% − dense, as long"],
                                ["auc", "tpr_at_1pct_fpr", "tpr_at_0_01pct_fpr"])
    assert len(fig.axes) == 6  # a row per metric, ordinary and canaries side by side

    def band(ax):
        patch = [p for p in ax.patches if p.get_label() == "equivalence margin"][0]
        xs = patch.get_path().transformed(patch.get_patch_transform()).vertices[:, 0]
        return min(xs), max(xs)

    auc_ordinary, auc_canaries, tpr_ordinary, tpr_canaries, rare_ordinary, _ = fig.axes
    assert band(auc_ordinary) == pytest.approx((-0.01, 0.01))
    assert band(tpr_canaries) == pytest.approx((-1.0, 1.0))  # 1 point: rates in points
    assert tpr_canaries.get_xlabel() == "change, points"
    assert tpr_canaries.get_title() == "TPR 1%, canaries"
    # every panel on its own scale: the canaries' -5 points are not on the ordinary panel
    assert tpr_canaries.get_xlim()[0] < -5 < tpr_ordinary.get_xlim()[0]
    # a rate that no row resolves says so instead of an empty panel
    assert any("not resolved" in t.get_text() for t in rare_ordinary.texts)
    # one legend, below the panels, where it covers no point
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    legend_top = fig.legends[0].get_window_extent().y1
    assert all(ax.get_window_extent().y0 >= legend_top for ax in fig.axes)
    plt_close(fig)


def plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_zoo_utility_table_intervals_over_models() -> None:
    class FakeZoo:
        n_models = 4
        test_acc = [0.80, 0.82, 0.84, 0.86]

        def member_acc(self):
            return [1.0, 1.0, 0.9, 0.9]

    table = verdicts.zoo_utility_table({"F": {"dense": FakeZoo()}})
    row = table.iloc[0]
    assert row["test accuracy"] == pytest.approx(0.83) and row["lo"] < 0.83 < row["hi"]
    assert row["member accuracy"] == pytest.approx(0.95) and row["family"] == "F"


def test_comparison_rows_label_and_skip_empty_subsets() -> None:
    n, p = 16, 400
    membership = lira_in_out_sets(p, n, 2).numpy().astype(bool)
    rng = np.random.default_rng(0)
    no_canaries = np.zeros(p, bool)
    a = ZooScores("lira_online", "a", "a", rng.normal(size=(n, p)) + membership, np.zeros(n),
                  membership, no_canaries)
    b = ZooScores("lira_online", "b", "b", rng.normal(size=(n, p)), np.zeros(n), membership,
                  no_canaries)
    rows = evidence.comparison_rows(a, b, n_bootstrap=50, family="F", comparison="a − b")
    assert {r["examples"] for r in rows} == {"ordinary"}  # no canaries: no canary rows
    assert len(rows) == len(evidence.METRICS) and all(r["family"] == "F" for r in rows)
    auc = next(r for r in rows if r["metric"] == "auc")
    assert auc["reading"] == "higher" and auc["change"] > 0.2


def test_box_table_shows_the_headline_cells() -> None:
    box = verdicts.box_table(_table(), ["F"], metrics=("auc", "tpr_at_1pct_fpr"))
    assert list(box["comparison"]) == ["ADMM 90% − dense", "ADMM 90% − dense, as long"]
    assert box.iloc[0]["AUC"] == "+0.020 [+0.015, +0.025] higher"
    assert box.iloc[1]["AUC"] == "+0.001 [-0.004, +0.006] equivalent"
    assert box.iloc[1]["TPR 1%"] == "-"  # no ordinary TPR row for that comparison
    with pytest.raises(UserError):
        verdicts.box_table(_table(), ["another family"])
