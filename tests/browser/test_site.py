"""The built site works offline in a real browser.

Debian's Chromium, driven by Playwright with ``executable_path`` (never
``playwright install``), opens pages of ``_build/html`` served from 127.0.0.1.
Every request that would leave the machine is blocked and fails the test, as do
console errors, failed requests, math left as raw LaTeX, and missing figures or
widgets. A screenshot of each page goes to ``_build/screenshots/``.

Run after the site is built (``make test`` does both).
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# page -> what it must show: figures (<img> from notebook outputs) and widgets
PAGES = {
    "index.html": {"math": False, "figures": 0, "widgets": 0},
    "chapters/00_preliminaries/02_activations.html": {"math": True, "figures": 2, "widgets": 1},
    "chapters/00_preliminaries/03_losses.html": {"math": True, "figures": 2, "widgets": 0},
    # every other page with a widget, so a widget that fails to render anywhere is caught
    "chapters/01_sgd/01_minibatch_sgd.html": {"math": True, "figures": 2, "widgets": 1},
    "chapters/02_normalization/02_batchnorm_mlp_cnn.html": {"math": True, "figures": 1, "widgets": 1},
    # one page of the dlbook API reference: docstring math rendered by the vendored MathJax
    "book/api/norm.html": {"math": True, "figures": 0, "widgets": 0},
    # the bilingual glossary: math, and Chinese terms (checked for glyphs below)
    "book/glossary.html": {"math": True, "figures": 0, "widgets": 0},
    "chapters/05_regularization/06_smoothing_mixup_calibration.html": {"math": True, "figures": 2, "widgets": 1},
}

pytestmark = pytest.mark.skipif(not (SITE / "index.html").exists(), reason="the site is not built (run make book)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run `python tools/ensure_chromium.py`")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _open(browser, url):
    """Load a page, blocking and recording every request to another host."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    local = urlparse(url).netloc

    def route(r):
        if urlparse(r.request.url).scheme in ("data", "blob") or urlparse(r.request.url).netloc == local:
            r.continue_()
        else:
            problems.append(f"external request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="networkidle")
    return page, problems


@pytest.mark.parametrize("path", list(PAGES))
def test_page_renders_offline(browser, server, path):
    expect = PAGES[path]
    page, problems = _open(browser, f"{server}/{path}")
    if expect["math"]:
        page.wait_for_selector("mjx-container", state="attached", timeout=20_000)
        page.wait_for_function("() => !window.MathJax || !MathJax.startup || MathJax.startup.promise",
                               timeout=20_000)
        page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
        raw = page.evaluate("""() => Array.from(document.querySelectorAll('.math, span.math, div.math'))
                                 .filter(e => !e.querySelector('mjx-container')).length""")
        assert raw == 0, f"{raw} math elements were left as raw LaTeX"
        visible = page.inner_text("main")
        assert "$$" not in visible and "\\frac" not in visible, "raw LaTeX is visible in the page text"
    if expect["figures"]:
        loaded = page.evaluate("""() => Array.from(document.querySelectorAll('.cell_output img'))
                                    .filter(i => i.complete && i.naturalWidth > 0).length""")
        assert loaded >= expect["figures"], f"expected at least {expect['figures']} figures, {loaded} loaded"
    if expect["widgets"]:
        page.wait_for_selector(".jupyter-widgets", timeout=20_000)
        widgets = page.evaluate("() => document.querySelectorAll('.jupyter-widgets select, .jupyter-widgets .slider').length")
        assert widgets >= expect["widgets"], f"expected {expect['widgets']} rendered widget controls, found {widgets}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / (path.replace("/", "_").replace(".html", ".png"))), full_page=True)
    page.close()
    assert not problems, "\n".join(problems)


def test_notebook_page_has_colab_and_download_buttons(browser, server):
    """The Colab link is built from the one repository URL in _config.yml."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tools.nbtools import repository_url

    page, problems = _open(browser, f"{server}/chapters/00_preliminaries/02_activations.html")
    colab = f"https://colab.research.google.com/github/{repository_url().split('github.com/')[1]}/blob/main/chapters/00_preliminaries/02_activations.ipynb"
    assert page.locator(f'a[href="{colab}"]').count() == 1, f"no Colab launch link to {colab}"
    assert page.locator('a[href$="_sources/chapters/00_preliminaries/02_activations.ipynb"]').count() >= 1, "no .ipynb download"
    page.close()
    assert not problems, "\n".join(problems)


def test_dark_mode_switch_works(browser, server):
    page, problems = _open(browser, f"{server}/book/intro.html")
    before = page.evaluate("() => document.documentElement.dataset.theme")
    page.locator("button.theme-switch-button").first.click()
    page.wait_for_timeout(300)
    after = page.evaluate("() => document.documentElement.dataset.theme")
    assert {before, after} <= {"light", "dark", "auto"} and before != after, (before, after)
    page.close()
    assert not problems, "\n".join(problems)


def test_search_finds_pages_offline(browser, server):
    page, problems = _open(browser, f"{server}/search.html?q=saturation")
    page.wait_for_selector("#search-results li", timeout=20_000)
    titles = page.inner_text("#search-results")
    assert "Activations" in titles, titles[:500]
    page.close()
    assert not problems, "\n".join(problems)


def test_every_notebook_that_plots_shows_its_figures():
    """A build whose kernels lost their figures (for example MPLBACKEND=Agg) must not pass."""
    import json

    missing = []
    for nb_path in sorted((ROOT / "chapters").rglob("*.ipynb")):
        sources = "\n".join("".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code")
        if "plt." not in sources and "plot_" not in sources and "image_grid(" not in sources:
            continue
        html = SITE / nb_path.relative_to(ROOT).with_suffix(".html")
        if html.exists() and "_images/" not in html.read_text(encoding="utf-8"):
            missing.append(str(nb_path.relative_to(ROOT)))
    assert not missing, f"pages that plot but show no figure: {missing}"


def test_every_page_with_a_widget_is_checked_in_the_browser():
    with_widgets = sorted(str(p.relative_to(SITE)) for p in SITE.rglob("*.html")
                          if "application/vnd.jupyter.widget-view+json" in p.read_text(encoding="utf-8"))
    unchecked = [p for p in with_widgets if not PAGES.get(p, {}).get("widgets")]
    assert not unchecked, f"add these widget pages to PAGES: {unchecked}"


def test_no_page_references_a_cdn():
    """No built page may point at a host other than its own for scripts, styles or fonts."""
    offenders = []
    for html in SITE.rglob("*.html"):
        text = html.read_text(encoding="utf-8", errors="replace")
        for marker in ('src="https://', "src='https://", 'href="https://cdn', "cdn.jsdelivr", "cdnjs", "unpkg.com",
                       'rel="stylesheet" href="https://', "fonts.googleapis"):
            if marker in text:
                offenders.append(f"{html.relative_to(SITE)}: {marker}")
    assert not offenders, "\n".join(offenders[:20])


def test_api_reference_has_an_entry_for_every_public_name():
    """Every name in each module's __all__ has its anchor on the module's API page, and links back to a chapter
    (a package split into modules, like dlbook.privacy, documents each name on its module's page)."""
    import importlib
    import sys

    sys.path.insert(0, str(ROOT))
    from tools.api_pages import is_split_package, public_modules

    missing = []
    for short in public_modules():
        if is_split_package(short):
            continue  # dlbook.privacy's names have their entries on its modules' pages (dlbook.privacy.dp_sgd)
        html = (SITE / "book" / "api" / f"{short.replace('.', '_')}.html").read_text(encoding="utf-8")
        module = importlib.import_module(f"dlbook.{short}")
        missing += [f"dlbook.{short}.{n}" for n in module.__all__ if f'id="dlbook.{short}.{n}"' not in html]
    assert not missing, f"public names without an entry in the built API reference: {missing}"


def test_chapter_pages_link_into_the_api_reference():
    """The link cell of a chapter notebook resolves: its page links to an API page's anchor."""
    html = (SITE / "chapters" / "01_sgd" / "01_minibatch_sgd.html").read_text(encoding="utf-8")
    assert "book/api/train.html#dlbook.train.fit" in html


# Draws a string on a canvas in the font the page uses for glossary terms, and compares it with
# the same font's drawing of a code point no font has (U+10FFFD): equal pixels mean an empty box.
_GLYPH_CHECK = """(text) => {
  const font = getComputedStyle(document.querySelector('dl.glossary dt')).font;
  const draw = (s) => {
    const c = document.createElement('canvas'); c.width = 40; c.height = 40;
    const g = c.getContext('2d'); g.font = font.replace(/\\d+(\\.\\d+)?px/, '24px'); g.fillText(s, 4, 30);
    return Array.from(g.getImageData(0, 0, 40, 40).data).join(',');
  };
  const missing = draw(String.fromCodePoint(0x10FFFD));
  return Array.from(text).filter(ch => draw(ch) === missing);
}"""


def test_glossary_shows_chinese_glyphs(browser, server):
    """Every Chinese character of the glossary's terms is drawn with a real glyph (needs a CJK font)."""
    page, problems = _open(browser, f"{server}/book/glossary.html")
    terms = page.evaluate("() => Array.from(document.querySelectorAll('dl.glossary dt')).map(d => d.innerText).join('')")
    chinese = "".join(sorted({ch for ch in terms if "\u4e00" <= ch <= "\u9fff"}))
    assert len(chinese) > 50, f"expected the Chinese terms on the page, found {chinese!r}"
    boxes = page.evaluate(_GLYPH_CHECK, chinese)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "book_glossary_top.png"))
    page.close()
    assert not boxes, f"drawn as empty boxes (no font with these glyphs): {''.join(boxes)}"
    assert not problems, "\n".join(problems)


def test_search_finds_a_glossary_entry_by_its_chinese_term(browser, server):
    page, problems = _open(browser, f"{server}/search.html?q=%E5%BE%AE%E8%B0%83")  # 微调, fine-tuning
    page.wait_for_selector("#search-results li", timeout=20_000)
    results = page.inner_text("#search-results")
    page.close()
    assert "Glossary" in results or "微调" in results, results[:500]
    assert not problems, "\n".join(problems)
