"""No stored point estimate outside its own interval (issue 28, item 2).

The book prints an estimate with its interval as ``x [lo, hi]`` (``mh.notebook.format_value``):
``0.646 [0.620, 0.669]``, ``60.4% [60.1, 60.7]``, ``+0.0235 [+0.0195, +0.0275]``, with an ASCII
or a Unicode minus (``−``), a ``%`` or a unit word (``points``) after the estimate. A chapter
glues the same triple as three values (``K`` or ``K_change``, ``K_lo``, ``K_hi``). This test
reads every committed notebook's stored outputs (``text/plain``, ``text/html``, stream text and
glued values) and the intro, and checks ``lo <= x <= hi`` for every such triple, allowing the
rounding of the printed precision. A printed estimate outside its interval is a computing error
(an interval of another quantity, a point estimate of another sample) and is never a result.

The scanner is strict about shape so that citations (``[1]``), list reprs (``[0, 1, 2]``) and
headers (``AUC [95% interval]``) are not read as intervals: exactly two numbers inside the
brackets, and a number right before them.
"""

from __future__ import annotations

import html
import re
from decimal import Decimal
from pathlib import Path
from typing import Iterator, NamedTuple

import nbformat
import pytest

from book_files import ROOT, chapter_notebooks

MINUS = "\u2212"  # −
_NUM = r"[+\-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
# estimate, optional unit, then "[lo, hi]" with an optional "%" (or unit) on each bound
INTERVAL = re.compile(
    rf"(?<![\w.,\[\]/:+\-\u2212])(?P<x>{_NUM})(?P<unit>%| ?points| ?pp)?"
    rf"[ \u00a0]?\[[ \u00a0]*(?P<lo>{_NUM})%?[ \u00a0]*,[ \u00a0]*(?P<hi>{_NUM})%?[ \u00a0]*\]"
    rf"(?![\w\[])"
)
_TAG = re.compile(r"<[^>]+>")


class Interval(NamedTuple):
    where: str
    text: str
    x: Decimal
    lo: Decimal
    hi: Decimal
    slack: Decimal  # half a unit of the printed precision of x and of the bound, summed

    @property
    def ok(self) -> bool:
        return self.lo - self.slack <= self.x <= self.hi + self.slack


def _number(text: str) -> tuple[Decimal, Decimal]:
    """The printed number and half a unit of its last printed digit."""
    clean = text.replace(MINUS, "-").replace(",", "")
    value = Decimal(clean)
    decimals = len(clean.split(".", 1)[1]) if "." in clean else 0
    return value, Decimal(5) * Decimal(10) ** (-decimals - 1)


def _plain(text: str) -> str:
    """Markup taken away (an HTML cell's tags, entities), so ``<td>0.6 [0.5, 0.7]</td>`` reads."""
    return html.unescape(_TAG.sub(" ", text))


def scan(text: str, where: str = "") -> list[Interval]:
    """Every ``x [lo, hi]`` printed in ``text`` (plain text or HTML)."""
    found = []
    for m in INTERVAL.finditer(_plain(text)):
        (x, hx), (lo, hlo), (hi, hhi) = (_number(m[k]) for k in ("x", "lo", "hi"))
        found.append(Interval(where, m.group(0), x, lo, hi, hx + max(hlo, hhi)))
    return found


def glued_values(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Every value a notebook glued, by key, as its stored ``text/plain``."""
    glued = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None:
                continue
            data = out.get("data", {})
            text = data.get("application/papermill.record/text/plain", data.get("text/plain"))
            if text is not None:
                glued[name] = text if isinstance(text, str) else "".join(text)
    return glued


def glued_intervals(glued: dict[str, str], where: str = "") -> list[Interval]:
    """The glued triples: ``K_lo`` and ``K_hi`` with ``K`` (or ``K_change``) beside them."""
    found = []
    for key in sorted(glued):
        if not key.endswith("_lo") or key[:-3] + "_hi" not in glued:
            continue
        stem = key[:-3]
        point = next((k for k in (stem, stem + "_change") if k in glued), None)
        if point is None:
            continue
        try:
            x, lo, hi = (Decimal(glued[k]) for k in (point, key, stem + "_hi"))
        except ArithmeticError:  # a text, not a number: nothing to compare
            continue
        if not all(v.is_finite() for v in (x, lo, hi)):
            continue
        slack = Decimal("1e-9") * max(abs(x), abs(lo), abs(hi), Decimal(1))
        found.append(Interval(where, f"{point} = {glued[point]} [{glued[key]}, {glued[stem + '_hi']}]",
                              x, lo, hi, slack))
    return found


def _output_texts(nb: nbformat.NotebookNode) -> Iterator[tuple[int, str]]:
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if "text" in out:
                yield index, out["text"] if isinstance(out["text"], str) else "".join(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime.endswith("text/plain"):
                    yield index, value if isinstance(value, str) else "".join(value)


def notebook_intervals(path: Path) -> list[Interval]:
    nb = nbformat.read(path, as_version=4)
    found = []
    for index, text in _output_texts(nb):
        found.extend(scan(text, f"{path.name} cell {index}"))
    found.extend(glued_intervals(glued_values(nb), f"{path.name} (glued)"))
    return found


def intro_intervals() -> list[Interval]:
    return scan((ROOT / "book" / "intro.md").read_text(), "intro.md")


# ----------------------------------------------------------------------------- the scanner


@pytest.mark.parametrize("text, expected", [
    ("0.646 [0.620, 0.669]", [("0.646", "0.620", "0.669")]),
    ("<td class=\"data row0 col3\" >60.4% [60.1, 60.7]</td>", [("60.4", "60.1", "60.7")]),
    ("AUC +0.0235 [+0.0195, +0.0275] (higher)", [("0.0235", "0.0195", "0.0275")]),
    ("\u22120.1375 [\u22120.6775, \u22120.1275]", [("-0.1375", "-0.6775", "-0.1275")]),
    ("+13.56 points [-10.31, +32.85]", [("13.56", "-10.31", "32.85")]),
    ("1.03% [1.00, 41.16]", [("1.03", "1.00", "41.16")]),
    ("64,000 [63,100, 64,900]", [("64000", "63100", "64900")]),
    # not intervals: citations, list reprs, headers, ranges of a parameter
    ("as shown in [1] and [2, 3]", []),
    ("seeds: [0, 1, 2]", []),
    ("EPOCH_SWEEP = [1, 3]", []),
    ("sizes 3 [1, 2, 3]", []),
    ("AUC [95% bootstrap interval]", []),
    ("mean [95% interval]", []),
    ("x[0, 1]", []),
    ("array([0.5, 0.7])", []),
    ("[[0.1, 0.2], [0.3, 0.4]]", []),
    ("0.5, [0.1, 0.2]", []),
])
def test_scanner_reads_only_intervals(text, expected) -> None:
    got = [(str(i.x), str(i.lo), str(i.hi)) for i in scan(text)]
    assert got == [tuple(str(Decimal(v)) for v in triple) for triple in expected], text


def test_scanner_flags_an_estimate_outside_its_interval() -> None:
    bad = scan("| ADMM − dense | \u22120.1375 [\u22120.1275, +0.6775] | 1.03% [1.10, 41.16] |")
    assert [i.ok for i in bad] == [False, False]
    good = scan("| ADMM − dense | \u22120.1375 [\u22120.6775, \u22120.1275] | 1.03% [1.00, 41.16] |")
    assert [i.ok for i in good] == [True, True]
    # on the edge at the printed precision: 0.650 may be 0.6504 against 0.6505 rounded up
    assert all(i.ok for i in scan("0.650 [0.651, 0.700]"))
    assert not any(i.ok for i in scan("0.650 [0.652, 0.700]"))


def test_glued_triples_are_checked() -> None:
    glued = {"ch9_x": "0.5", "ch9_x_lo": "0.6", "ch9_x_hi": "0.7",
             "ch9_admm_change": "-1.0", "ch9_admm_lo": "-1.5", "ch9_admm_hi": "-0.5",
             "ch9_word_lo": "'low'", "ch9_word_hi": "'high'", "ch9_word": "'mid'"}
    found = {i.text.split(" =")[0]: i.ok for i in glued_intervals(glued)}
    assert found == {"ch9_x": False, "ch9_admm_change": True}


# ----------------------------------------------------------------------------- the book


def _describe(bad: list[Interval]) -> str:
    return "\n".join(f"{i.where}: {i.text}" for i in bad)


@pytest.mark.parametrize("path", chapter_notebooks(), ids=lambda p: p.stem)
def test_no_stored_estimate_outside_its_interval(path: Path) -> None:
    bad = [i for i in notebook_intervals(path) if not i.ok]
    assert not bad, (f"{path.name}: {len(bad)} stored estimate(s) outside their own interval:\n"
                     + _describe(bad))


def test_no_estimate_outside_its_interval_in_the_intro() -> None:
    bad = [i for i in intro_intervals() if not i.ok]
    assert not bad, "intro.md: estimate(s) outside their own interval:\n" + _describe(bad)
