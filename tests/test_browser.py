"""The built book as a reader sees it: pages open in headless Chromium, figures load, no cell
shows an error, glued numbers are filled in, equations render, and pages read cleanly (the
setup cell collapsed to one line, no horizontal scrolling of code or tables, figures shown
near their own size). Screenshots go to ``_build/screenshots/``.

``make test`` installs Debian's ``chromium`` (where apt exists) and fetches MathJax
(``tools/fetch_mathjax.sh``) first, and sets ``MCMIA_BROWSER_REQUIRED=1``: then a missing
chromium, ``playwright`` or MathJax fails these tests instead of skipping them. Run by hand
without that variable, they are skipped where one is missing. The book loads MathJax from its
CDN; the equation test serves the same MathJax version from ``.cache/mathjax`` in its place
(the tests never use the network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from book_files import ROOT, chapter_notebooks

MATHJAX = ROOT / ".cache" / "mathjax" / "package"
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
#: A window wide enough for the theme's content column to reach its default (widest) width,
#: about 93 characters of code: the notebooks' 88-column code shows without scrolling.
THEME_VIEWPORT = {"width": 1440, "height": 900}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Set by ``make test``: what these tests need was installed, so its absence is a failure.
REQUIRED = os.environ.get("MCMIA_BROWSER_REQUIRED") == "1"


def _missing(what: str) -> None:
    """Fail (under ``make test``) or skip (run by hand) for a missing prerequisite."""
    message = f"{what} (make test installs it: see the Makefile's browser target)"
    if REQUIRED:
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


try:
    import playwright.sync_api  # noqa: F401
except ImportError:
    _missing("the playwright package is not installed")
playwright = sys.modules["playwright.sync_api"]
pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    if CHROMIUM is None:
        _missing("Debian's chromium is not installed")


def _chapters() -> list[str]:
    """The names of the chapters a reader can reach (``_toc.yml``)."""
    return [path.stem for path in chapter_notebooks()]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the book from the stored outputs into a private folder (nothing is executed)."""
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "-W", "-n",
                             "--keep-going"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_page_renders(chapter: str, built_book: Path, browser) -> None:
    page_file = built_book / "book" / f"{chapter}.html"
    assert page_file.exists(), f"{chapter} is not in the built book (missing from _toc.yml?)"
    page = browser.new_page(viewport=THEME_VIEWPORT)
    page.goto(page_file.as_uri(), wait_until="load")
    images = page.evaluate("""() => Array.from(document.querySelectorAll('.cell_output img'))
        .map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))""")
    assert images, f"{chapter}: no figures in the cell outputs"
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"{chapter}: figures that do not load: {broken}"
    errors = page.evaluate("""() => Array.from(document.querySelectorAll(
        '.output.error, .output.traceback, .output.stderr')).map(e => e.innerText.slice(0, 200))""")
    assert not errors, f"{chapter}: cells show errors or stderr: {errors}"
    text = page.inner_text("main")
    assert "{glue" not in text and "glue:text" not in text, f"{chapter}: a glued number is missing"
    glued = page.evaluate("() => document.querySelectorAll('.pasted-text, .pasted-inline').length")
    assert glued > 0, f"{chapter}: no glued numbers in the prose"
    _check_reading(chapter, page)
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{chapter}.png"), full_page=True)
    page.close()


#: A figure shown narrower than this share of its own pixel width has text too small to read
#: (e.g. four panels in one row squeezed to the page width).
MIN_FIGURE_SCALE = 0.65


def _check_reading(chapter: str, page) -> None:
    """The page opens with its story: setup collapsed; nothing scrolls sideways; figures legible."""
    setup = page.evaluate("""() => {
        const cell = document.querySelector('main .cell');
        const details = cell && cell.querySelector('details.hide');
        return cell && {text: cell.innerText.slice(0, 300), collapsed: !!details && !details.open,
                        summary: details ? details.querySelector('summary').innerText : ''};
    }""")
    assert setup and setup["collapsed"], f"{chapter}: the first cell (setup) is not collapsed"
    assert setup["summary"].startswith("Setup: installs the package"), setup["summary"]
    assert "import importlib" not in setup["text"], f"{chapter}: setup code shows before the story"
    wide = page.evaluate("""() => {
        const shown = e => e.offsetParent !== null && e.getClientRects().length > 0;
        const out = [];
        for (const e of document.querySelectorAll('main .cell_input pre, main .cell_output pre')) {
            if (shown(e) && e.scrollWidth > e.clientWidth + 1) out.push('code: ' + e.innerText.slice(0, 80));
        }
        for (const t of document.querySelectorAll('main .cell_output table')) {
            const box = t.closest('.cell_output');
            if (shown(t) && t.getBoundingClientRect().width > box.getBoundingClientRect().width + 1)
                out.push('table: ' + t.innerText.slice(0, 80));
        }
        return out;
    }""")
    assert not wide, f"{chapter}: scrolls sideways: {wide}"
    small = page.evaluate("""(minScale) => Array.from(document.querySelectorAll('main .cell_output img'))
        .filter(i => i.naturalWidth > 0 && i.getBoundingClientRect().width / i.naturalWidth < minScale)
        .map(i => i.getAttribute('src') + ' shown at ' +
             (i.getBoundingClientRect().width / i.naturalWidth).toFixed(2))""", MIN_FIGURE_SCALE)
    assert not small, f"{chapter}: figures shrunk below legibility: {small}"
    raw = page.evaluate("() => document.querySelectorAll('main .cell_output table.dataframe').length")
    assert raw == 0, f"{chapter}: {raw} table(s) shown as DataFrame dumps"


def test_intro_links_every_chapter(built_book: Path, browser) -> None:
    page = browser.new_page()
    page.goto((built_book / "book" / "intro.html").as_uri(), wait_until="load")
    links = page.evaluate("() => Array.from(document.querySelectorAll('main a')).map(a => a.getAttribute('href'))")
    for chapter in _chapters():
        assert any(link and chapter in link for link in links), f"the intro does not link {chapter}"
    page.close()


def _serve_local_mathjax(route) -> None:
    """Answer a request for the CDN's MathJax 3 with the same file from the local copy."""
    relative = route.request.url.split(MATHJAX_CDN, 1)[1].split("?", 1)[0]
    path = (MATHJAX / relative).resolve()
    if MATHJAX.resolve() not in path.parents or not path.is_file():
        route.fulfill(status=404, body="")
        return
    kind = "application/javascript" if path.suffix == ".js" else "font/woff"
    route.fulfill(status=200, body=path.read_bytes(), headers={"Content-Type": kind})


def _has_math(chapter: str) -> bool:
    import json

    cells = json.loads((ROOT / "book" / f"{chapter}.ipynb").read_text())["cells"]
    return any(c["cell_type"] == "markdown" and "$" in "".join(c["source"]) for c in cells)


@pytest.fixture(scope="module")
def mathjax() -> Path:
    """The local MathJax copy (checked before the book is built)."""
    if not (MATHJAX / "es5" / "tex-mml-chtml.js").exists():
        _missing("MathJax is not fetched (tools/fetch_mathjax.sh)")
    return MATHJAX


@pytest.mark.parametrize("chapter", [c for c in _chapters() if _has_math(c)])
def test_equations_render(chapter: str, mathjax: Path, built_book: Path, browser) -> None:
    page = browser.new_page()
    page.route(f"{MATHJAX_CDN}**", _serve_local_mathjax)
    page.goto((built_book / "book" / f"{chapter}.html").as_uri(), wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")
    rendered = page.evaluate("() => document.querySelectorAll('mjx-container').length")
    assert rendered > 0, f"{chapter}: no equation was rendered by MathJax"
    errors = page.evaluate("() => Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent)")
    assert not errors, f"{chapter}: MathJax could not typeset {errors}"
    text = page.inner_text("main")
    assert "\\frac" not in text and "\\begin{" not in text, f"{chapter}: LaTeX source shown instead of math"
    page.close()
