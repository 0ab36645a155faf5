"""The four readings of a change, what the data resolve, the attack that decides, and the verdict
rule (mcmia_helpers.evidence): each test plants a plausible wrong answer that it would catch."""

from __future__ import annotations

import numpy as np
import pytest

from mcmia_helpers import evidence
from mcmia_helpers.attacks.lira import lira_in_out_sets
from mcmia_helpers.attacks.names import ATTACKS, PLAIN_NAMES, aware_form, plain_name
from mcmia_helpers.errors import UserError
from mcmia_helpers.zoo.evaluate import ZooScores


@pytest.mark.parametrize("low, high, margin, wanted", [
    (-0.004, 0.004, 0.005, "equivalent"),       # inside the margin, crosses zero
    (0.001, 0.004, 0.005, "equivalent"),        # excludes zero but too small to matter
    (-0.005, 0.005, 0.005, "equivalent"),       # the margin's edges count as inside
    (0.001, 0.02, 0.005, "higher"),             # excludes zero, leaves the margin
    (-0.03, -0.006, 0.005, "lower"),
    (-0.01, 0.02, 0.005, "inconclusive"),       # crosses zero and leaves the margin
    (None, None, 0.005, "inconclusive"),
    (float("nan"), 0.1, 0.005, "inconclusive"),
])
def test_reading_has_four_outcomes(low, high, margin, wanted) -> None:
    assert evidence.reading(low, high, margin) == wanted


def test_reading_refuses_a_reversed_interval_or_a_negative_margin() -> None:
    with pytest.raises(UserError):
        evidence.reading(0.2, 0.1, 0.01)
    with pytest.raises(UserError):
        evidence.reading(-0.1, 0.1, -0.01)


def test_margins_are_stated_for_every_metric_with_a_reason() -> None:
    assert set(evidence.MARGINS) == set(evidence.METRICS) == set(evidence.MARGIN_REASONS)
    assert evidence.MARGINS["tpr_at_0_1pct_fpr"] == 0.005 and evidence.MARGINS["auc"] == 0.01
    assert all(len(reason) > 40 for reason in evidence.MARGIN_REASONS.values())


def test_a_rate_needs_ten_false_positives() -> None:
    assert evidence.resolves("tpr_at_0_1pct_fpr", 10_000)
    assert not evidence.resolves("tpr_at_0_1pct_fpr", 9_999)
    assert not evidence.resolves("tpr_at_0_01pct_fpr", 64_000)  # the book's LeNet-5 zoo
    assert evidence.resolves("tpr_at_1pct_fpr", 1_000) and not evidence.resolves("tpr_at_1pct_fpr", 999)
    assert evidence.resolves("auc", 1) and evidence.resolves("accuracy_oracle", 1)
    assert [evidence.nonmembers_needed(k) for k in ("tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr",
                                                    "tpr_at_0_01pct_fpr", "auc")] == [1_000, 10_000,
                                                                                      100_000, 0]


def test_the_decider_is_the_highest_rate_at_the_lowest_resolved_fpr() -> None:
    rows = {
        "lira_online": {"tpr_at_1pct_fpr": 0.08, "tpr_at_0_1pct_fpr": 0.010, "auc": 0.70},
        "rmia_offline": {"tpr_at_1pct_fpr": 0.06, "tpr_at_0_1pct_fpr": 0.020, "auc": 0.66},
        "loss": {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": None, "auc": 0.75},
    }
    # 64,000 non-members resolve 0.1%: RMIA wins there although LiRA wins at 1% and loss on AUC
    assert evidence.choose_decider(rows, 64_000) == ("rmia_offline", "tpr_at_0_1pct_fpr")
    # 1,000 non-members resolve only 1%
    assert evidence.choose_decider(rows, 1_000) == ("lira_online", "tpr_at_1pct_fpr")
    tie = {"a": {"tpr_at_1pct_fpr": 0.05, "auc": 0.6}, "b": {"tpr_at_1pct_fpr": 0.05, "auc": 0.7}}
    assert evidence.choose_decider(tie, 1_000)[0] == "b"
    # 500 non-members resolve no rate: the AUC decides
    assert evidence.choose_decider(rows, 500) == ("loss", "auc")
    with pytest.raises(UserError):
        evidence.choose_decider({}, 500)


@pytest.mark.parametrize("readings, word", [
    (["lower", "equivalent", "inconclusive"], "protects"),
    (["higher", "equivalent"], "leaks more"),
    (["higher", "lower", "equivalent"], "mixed"),
    (["equivalent", "equivalent", "not resolved"], "equivalent"),
    (["equivalent", "inconclusive"], "inconclusive"),
    (["not resolved", "too few targets"], "inconclusive"),
])
def test_verdict_word_follows_the_stated_rule(readings, word) -> None:
    assert evidence.verdict_word(readings) == word


def test_verdict_sentence_names_the_metrics_that_disagree() -> None:
    rows = [{"metric": "auc", "examples": "ordinary", "reading": "higher"},
            {"metric": "tpr_at_0_1pct_fpr", "examples": "ordinary", "reading": "lower"},
            {"metric": "accuracy_calibrated", "examples": "canaries", "reading": "equivalent"},
            {"metric": "tpr_at_0_01pct_fpr", "examples": "ordinary", "reading": "not resolved"}]
    text = evidence.verdict_sentence("ADMM 90% minus dense", rows)
    assert text == ("ADMM 90% minus dense: mixed (higher: AUC on ordinary; lower: TPR @ 0.1% FPR "
                    "on ordinary; equivalent: accuracy (calibrated) on canaries; not read: "
                    "TPR @ 0.01% FPR on ordinary)")


def _zoo(n: int, p: int, leak: float, seed: int) -> ZooScores:
    membership = lira_in_out_sets(p, n, 5).numpy().astype(bool)
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, p)) + leak * membership
    canary = np.zeros(p, bool)
    canary[:20] = True
    return ZooScores("lira_online", f"z{seed}", "dense", scores, np.zeros(n), membership, canary)


def test_paired_rows_read_each_metric_and_say_what_is_missing() -> None:
    dense, weaker = _zoo(16, 1500, 1.0, 1), _zoo(16, 1500, 0.4, 1)
    rows = {r["metric"]: r for r in evidence.paired_rows(weaker, dense, "ordinary", n_bootstrap=100)}
    assert rows["auc"]["reading"] == "lower" and rows["auc"]["change"] < -0.1
    assert rows["auc"]["low"] <= rows["auc"]["change"] <= rows["auc"]["high"]
    # 16 x 740 = 11,840 ordinary non-members: 0.1% resolved, 0.01% not
    assert rows["tpr_at_0_1pct_fpr"]["change"] is not None
    assert rows["tpr_at_0_01pct_fpr"]["reading"] == "not resolved"
    assert rows["tpr_at_0_01pct_fpr"]["note"] == "needs 100,000 non-members (11,840 here)"
    canaries = {r["metric"]: r for r in evidence.paired_rows(weaker, dense, "canaries", 100)}
    assert canaries["tpr_at_1pct_fpr"]["reading"] == "not resolved"  # 160 non-members
    few = evidence.paired_rows(evidence.take_targets(weaker, range(8)),
                               evidence.take_targets(dense, range(8)), "ordinary", 100)
    assert all(r["reading"] in ("too few targets", "not resolved") for r in few)
    few_auc = next(r for r in few if r["metric"] == "auc")
    assert few_auc["note"] == "too few targets (4 pairs; 8 needed)" and few_auc["low"] is None


def test_plain_names_cover_every_attack() -> None:
    assert set(PLAIN_NAMES) == set(ATTACKS)
    assert plain_name("rmia_offline") == "RMIA offline"
    assert aware_form("rmia_offline") == "rmia_offline_aware" and aware_form("loss") == "loss"
    assert aware_form("lira_online_aware") == "lira_online_aware"


def test_an_interval_that_excludes_its_estimate_is_not_read(monkeypatch) -> None:
    dense, weaker = _zoo(16, 1500, 1.0, 1), _zoo(16, 1500, 0.4, 1)
    real = evidence.paired_difference

    def shifted(*args, **kwargs):
        out = real(*args, **kwargs)
        out["auc"]["pooled_ci95"] = [out["auc"]["pooled"] + 0.01, out["auc"]["pooled"] + 0.02]
        return out

    monkeypatch.setattr(evidence, "paired_difference", shifted)
    row = evidence.paired_row(weaker, dense, "auc", "ordinary", n_bootstrap=50)
    assert row["reading"] == "not resolved" and row["low"] is None
    assert "outside its bootstrap interval" in row["note"]
    assert evidence.format_change(row).startswith(f"{row['change']:+.3f} (estimate outside")
