"""The chapters' claim cells check glued numbers against their tables (issue 22):
:func:`mcmia_helpers.notebook.check_glued` must fail on a number or a sentence that differs from
its table entry, on an expected name never glued, and on a glued number nobody checked."""

from __future__ import annotations

import math

import pytest

from mcmia_helpers import notebook


@pytest.fixture()
def glued(monkeypatch):
    """A clean registry of glued values for one test."""
    store: dict = {}
    monkeypatch.setattr(notebook, "GLUED", store)
    return store


def test_glue_keeps_every_value_as_a_python_number(glued) -> None:
    import numpy as np

    notebook.glue("ch9_auc", np.float64(0.625))
    notebook.glue("ch9_order", "dense < pruned")
    assert glued == {"ch9_auc": 0.625, "ch9_order": "dense < pruned"}
    assert type(glued["ch9_auc"]) is float


def test_check_glued_accepts_the_table_entries(glued) -> None:
    notebook.glue("ch9_auc", 0.1 + 0.2)
    notebook.glue("ch9_n", 500)
    notebook.glue("ch9_verdict", "ADMM lowers the TPR.")
    notebook.glue("ch9_scale", "ci")
    notebook.glue("ch9_missing", math.nan)
    notebook.check_glued({"ch9_auc": 0.3, "ch9_n": 500, "ch9_verdict": "ADMM lowers the TPR.",
                          "ch9_missing": float("nan")}, "ch9_", unchecked=["ch9_scale"])


@pytest.mark.parametrize("wanted, message", [
    ({"ch9_auc": 0.6531}, "ch9_auc glued as 0.653, its table says 0.6531"),  # another row
    ({"ch9_auc": "0.653"}, "ch9_auc glued as 0.653, its table says '0.653'"),  # text, not number
    ({"ch9_auc": 0.653, "ch9_tpr": 0.01}, "ch9_tpr was never glued"),
    ({"ch9_auc": math.nan}, "its table says nan"),
])
def test_check_glued_names_every_mismatch(glued, wanted, message) -> None:
    notebook.glue("ch9_auc", 0.653)
    with pytest.raises(AssertionError, match=message.replace("[", r"\[")):
        notebook.check_glued(wanted, "ch9_")


def test_check_glued_fails_on_a_verdict_from_other_scores(glued) -> None:
    notebook.glue("ch9_verdict", "ADMM does not measurably change the TPR.")
    with pytest.raises(AssertionError, match="ch9_verdict glued as"):
        notebook.check_glued({"ch9_verdict": "ADMM lowers the TPR."}, "ch9_")


def test_check_glued_fails_on_a_number_glued_without_a_check(glued) -> None:
    notebook.glue("ch9_auc", 0.653)
    notebook.glue("ch9_new_rate", 0.02)
    notebook.glue("ch8_other_chapter", 1.0)  # another prefix: not this chapter's claim
    with pytest.raises(AssertionError, match="glued without a check against a table: ch9_new_rate$"):
        notebook.check_glued({"ch9_auc": 0.653}, "ch9_")
    notebook.check_glued({"ch9_auc": 0.653}, "ch9_", unchecked=["ch9_new_rate"])


def test_table_row_reads_the_one_matching_row() -> None:
    import pandas as pd

    frame = pd.DataFrame({"defence": ["ADMM", "ADMM", "Min-Max"], "examples": ["ordinary", "canaries", "ordinary"],
                          "change": [-0.1, 0.2, 0.3]})
    assert notebook.table_row(frame, defence="ADMM", examples="canaries").change == 0.2
    with pytest.raises(AssertionError, match="2 rows of the table"):
        notebook.table_row(frame, defence="ADMM")
    with pytest.raises(AssertionError, match="0 rows of the table"):
        notebook.table_row(frame, defence="DP")
