"""Chapter 5's like-for-like tables (mcmia_helpers.exposure.seed_* and mcmia_helpers.notebook's
table helpers): the numbers are the paired per-seed changes of the attack chosen on the
undefended model, read with evidence.reading, and never a plausible wrong number."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcmia_helpers import evidence, exposure, notebook

COMPARISONS = [("prune", "none")]


def _attack(auc, tpr, acc, oracle, nonmembers=1000):
    return {"auc": auc, "tpr_at_1pct_fpr": tpr, "tpr_at_0_1pct_fpr": 0.0, "accuracy": acc,
            "accuracy_oracle": oracle, "advantage": 2 * oracle - 1, "threshold_kind": "calibrated",
            "n_nonmembers": nonmembers}


def _records(nonmembers=1000, seeds=(0, 1, 2)):
    """Undefended: 'loss' beats 'shadow' at 1% FPR. Pruned: 'shadow' is the stronger of the two
    (a table taking the maximum per defence would switch attacks between the rows)."""
    out = []
    for s in seeds:
        out.append({"arch": "lenet5", "defense": "none", "seed": s, "cell_id": f"none/{s}",
                    "test_acc": 0.80 + 0.01 * s, "calibration": "target",
                    "attacks": {"loss": _attack(0.60 + 0.01 * s, 0.030, 0.58, 0.59, nonmembers),
                                "shadow": _attack(0.55, 0.020, 0.54, 0.55, nonmembers)}})
        out.append({"arch": "lenet5", "defense": "prune", "seed": s, "cell_id": f"prune/{s}",
                    "test_acc": 0.78 + 0.02 * s, "calibration": "target", "compression_ratio": 10.0,
                    "attacks": {"loss": _attack(0.62 + 0.02 * s, 0.030, 0.60 + 0.01 * s, 0.61, nonmembers),
                                "shadow": _attack(0.70, 0.080, 0.66, 0.67, nonmembers)}})
    return out


def _changes(records):
    rows, nonmembers = exposure.undefended_metrics(records, "lenet5")
    attack, _ = evidence.choose_decider(rows, nonmembers)
    runs = exposure.seed_runs(records, {"lenet5": attack})
    return attack, runs, exposure.seed_changes(runs, COMPARISONS, margins=evidence.MARGINS,
                                               read=evidence.reading, resolves=evidence.resolves)


def test_the_deciding_attack_is_chosen_on_the_undefended_model() -> None:
    attack, runs, _ = _changes(_records())
    assert attack == "loss"  # not 'shadow', which does better on the pruned runs
    assert set(runs.attack) == {"loss"}


def test_changes_are_paired_seed_by_seed_with_a_t_interval() -> None:
    _, _, changes = _changes(_records())
    auc = notebook.table_row(changes, metric="auc")
    d = np.array([0.02, 0.03, 0.04])  # (0.62 + 0.02 s) - (0.60 + 0.01 s)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert auc.change == pytest.approx(0.03)
    assert (auc.low, auc.high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert auc.reading == evidence.reading(auc.low, auc.high, evidence.MARGINS["auc"]) == "higher"
    # The shadow attack's change (+0.15) or the unpaired difference of maxima are wrong numbers.
    assert auc.change != pytest.approx(0.15)
    acc = notebook.table_row(changes, metric="accuracy_calibrated")
    assert acc.change == pytest.approx(0.03)  # (0.60 + 0.01 s) - 0.58
    assert notebook.table_row(changes, metric="tpr_at_1pct_fpr").reading == "equivalent"
    assert auc.test_change == pytest.approx(-0.01)  # (0.78 + 0.02 s) - (0.80 + 0.01 s)


def test_the_table_cell_shows_the_change_in_points_without_wrapping() -> None:
    _, _, changes = _changes(_records())
    table = notebook.change_table(changes)
    cell = table.loc[table.measure == "attack accuracy, calibrated", "change [95% interval]"].item()
    acc = notebook.table_row(changes, metric="accuracy_calibrated")
    assert cell == notebook.interval_text(acc.change, acc.low, acc.high, points=True, signed=True)
    assert cell.startswith("+3.0\u00a0[") and " " not in cell and "-" not in cell
    assert cell != "+0.030\u00a0[" and "+3.0" in cell  # points, not fractions
    auc_cell = table.loc[table.measure == "AUC", "change [95% interval]"].item()
    assert auc_cell.startswith("+0.030\u00a0[")
    assert table.loc[0, "architecture"] == "LeNet-5" and table.loc[1, "architecture"] == ""
    assert "comparison" not in table  # one comparison: the caption names it
    assert table.loc[0, "attacker"] == "defence-aware" and table.loc[1, "attacker"] == ""
    two = exposure.seed_changes(_changes(_records())[1], [("prune", "none"), ("none", "prune")],
                                margins=evidence.MARGINS, read=evidence.reading,
                                resolves=evidence.resolves)
    assert notebook.change_table(two).loc[0, "comparison"] == "ADMM pruning − baseline"
    phrase = notebook.change_phrase(acc)
    assert phrase == cell + " points, " + acc.reading


def test_a_wrong_number_in_the_prose_fails_the_claim_check(monkeypatch) -> None:
    monkeypatch.setattr(notebook, "GLUED", {})
    _, _, changes = _changes(_records())
    row = notebook.table_row(changes, metric="accuracy_calibrated")
    notebook.glue("ch9_acc", "+3.1\u00a0[+0.6,\u00a0+5.5] points, higher")  # off by a tenth
    with pytest.raises(AssertionError, match="ch9_acc glued as"):
        notebook.check_glued({"ch9_acc": notebook.change_phrase(row)}, "ch9_")


def test_unresolved_rates_and_too_few_seeds_print_no_number_or_interval() -> None:
    _, runs, changes = _changes(_records(nonmembers=1000))
    few = _records(nonmembers=500, seeds=(0, 1))
    rows, nonmembers = exposure.undefended_metrics(few, "lenet5")
    assert not evidence.resolves("tpr_at_1pct_fpr", nonmembers)
    runs = exposure.seed_runs(few, {"lenet5": "loss"})
    changes = exposure.seed_changes(runs, COMPARISONS, margins=evidence.MARGINS,
                                    read=evidence.reading, resolves=evidence.resolves)
    tpr = notebook.table_row(changes, metric="tpr_at_1pct_fpr")
    assert tpr.reading == "not resolved" and not tpr.resolved and math.isnan(tpr.change)
    needed = {"tpr_at_1pct_fpr": evidence.nonmembers_needed("tpr_at_1pct_fpr")}
    assert notebook.change_phrase(tpr, needed) == "not resolved (500 non-members per run, 1,000 needed)"
    auc = notebook.table_row(changes, metric="auc")
    assert auc.seeds == 2 and math.isnan(auc.low) and auc.reading == "inconclusive"
    assert notebook.change_cell(auc, "auc") == "+0.025 (no interval: 2 seeds)"


def test_summary_clips_rates_and_hides_unresolved_ones() -> None:
    runs = exposure.seed_runs(_records(nonmembers=500), {"lenet5": "loss"})
    summary = exposure.seed_summary(runs, evidence.resolves)
    assert summary["tpr_at_1pct_fpr"].isna().all()
    assert (summary["test_acc_low"] >= 0).all() and (summary["test_acc_high"] <= 1).all()
    shown = notebook.summary_table(summary, ["test_acc", "auc", "tpr_at_1pct_fpr"])
    assert (shown["TPR at 1% FPR (%)"] == "-").all()
    assert shown.loc[0, "test accuracy (%)"].startswith("81.0\u00a0[")


def test_an_unresolved_cell_says_how_many_non_members_it_needs() -> None:
    runs = exposure.seed_runs(_records(nonmembers=500), {"lenet5": "loss"})
    changes = exposure.seed_changes(runs, COMPARISONS, margins=evidence.MARGINS,
                                    read=evidence.reading, resolves=evidence.resolves)
    table = notebook.change_table(changes, {"tpr_at_1pct_fpr": 1000})
    cell = table.loc[table.measure == "TPR at 1% FPR", "change [95% interval]"].item()
    assert cell == "- (500 of 1,000 non-members)"


def test_attack_table_prints_only_the_rates_its_non_members_resolve() -> None:
    from mcmia_helpers import notebook

    m = {"auc": 0.61, "tpr_at_1pct_fpr": 0.052, "tpr_at_0_1pct_fpr": 0.011, "accuracy": 0.58,
         "advantage": 0.2, "threshold_kind": "calibrated", "n_nonmembers": 1000, "ci95": {}}
    html = notebook.attack_table({"rmia_offline": m}).to_html()
    assert "RMIA offline" in html and "rmia_offline" not in html  # plain names
    assert "5.2%" in html  # 1% FPR: 10 false positives allowed among 1,000
    assert "needs 10,000 non-members" in html and "1.1%" not in html  # 0.1% FPR: one
    html = notebook.attack_table({"loss": {**m, "n_nonmembers": 20000}}).to_html()
    assert "1.1%" in html and "needs" not in html


def _reference_records(seeds=(0, 1, 2)):
    """LiRA in both forms: the unaware (plain) attack sees no change from pruning, the
    defence-aware one a rise of 0.05 AUC; the undefended runs hold both forms, equal."""
    out = []
    for s in seeds:
        base = _attack(0.60, 0.03, 0.57, 0.58)
        out.append({"arch": "lenet5", "defense": "none", "seed": s, "cell_id": f"none/{s}",
                    "test_acc": 0.9, "calibration": "target",
                    "attacks": {"loss": _attack(0.52, 0.01, 0.51, 0.52), "lira_online": base,
                                "lira_online_aware": base}})
        out.append({"arch": "lenet5", "defense": "prune", "seed": s, "cell_id": f"prune/{s}",
                    "test_acc": 0.9, "calibration": "target", "compression_ratio": 10.0,
                    "attacks": {"loss": _attack(0.52, 0.01, 0.51, 0.52),
                                "lira_online": _attack(0.60 + 0.001 * s, 0.03, 0.57, 0.58),
                                "lira_online_aware": _attack(0.65 + 0.001 * s, 0.05, 0.60, 0.61)}})
    return out


def test_both_attackers_come_from_one_record_of_a_reference_attack() -> None:
    records = _reference_records()
    rows, nonmembers = exposure.undefended_metrics(records, "lenet5")
    assert "lira_online_aware" not in rows  # the plain attack on an undefended model
    attack, _ = evidence.choose_decider(rows, nonmembers)
    assert attack == "lira_online"
    runs = exposure.seed_runs(records, {"lenet5": attack})
    assert len(runs) == 12  # 6 records x 2 attackers
    pruned = runs[runs.defense == "prune"].set_index(["attacker", "seed"])
    assert set(pruned.loc["aware"].attack) == {"lira_online_aware"}
    assert set(pruned.loc["unaware"].attack) == {"lira_online"}
    changes = exposure.seed_changes(runs, COMPARISONS, margins=evidence.MARGINS,
                                    read=evidence.reading, resolves=evidence.resolves)
    aware = notebook.table_row(changes, attacker="aware", metric="auc")
    unaware = notebook.table_row(changes, attacker="unaware", metric="auc")
    assert aware.change == pytest.approx(0.051) and aware.reading == "higher"
    assert unaware.change == pytest.approx(0.001) and unaware.reading == "equivalent"
    # the table keeps each comparison together: its unaware rows, then its aware rows
    both = exposure.seed_changes(runs, [("prune", "none"), ("none", "prune")],
                                 margins=evidence.MARGINS, read=evidence.reading,
                                 resolves=evidence.resolves)
    table = notebook.change_table(both)
    assert list(table.comparison[table.comparison != ""]) == ["ADMM pruning − baseline",
                                                              "baseline − ADMM pruning"]
    assert list(table.attacker[table.attacker != ""]) == ["unaware", "defence-aware"] * 2
    assert list(table.index[table.comparison != ""]) == [0, 8]
    summary = notebook.summary_table(exposure.seed_summary(runs, evidence.resolves), ["auc"])
    assert list(summary.attacker) == ["either", "unaware", "defence-aware"]
    assert list(summary.AUC.str[:5]) == ["0.600", "0.601", "0.651"]


def test_a_metric_attack_has_the_attacker_of_its_calibration() -> None:
    records = _records()
    for r in records:
        if r["defense"] == "prune":
            r["calibration"] = "undefended"
    runs = exposure.seed_runs(records, {"lenet5": "loss"})
    assert set(runs[runs.defense == "prune"].attacker) == {"unaware"}
    assert set(runs[runs.defense == "none"].attacker) == {"unaware", "aware"}
    del records[1]["calibration"]  # an old record: calibrated without the defence
    assert exposure.attacker_attacks(records[1], "loss") == {"unaware": "loss"}
    assert exposure.attacker_attacks(records[1], "lira_online") == {}
