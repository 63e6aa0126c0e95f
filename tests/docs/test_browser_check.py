"""The headless-Chromium docs check fails where a page does not render.

A small hand-written site (no mkdocs) with the vendored KaTeX and its init
script: one good page, and pages that each break one assertion. The check of
the real site runs in CI after ``make docs`` (``python -m tests.docs.browser_check``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.docs.browser_check import CHROMIUM, check_site

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"needs Debian's chromium at {CHROMIUM}")

ASSETS = Path(__file__).resolve().parents[2] / "docs" / "assets"
HEAD = (
    '<link rel="stylesheet" href="/assets/katex/katex.min.css">'
    '<script src="/assets/katex/katex.min.js"></script>'
)
NO_ICON = '<link rel="icon" href="data:,">'  # else the browser asks for /favicon.ico, a 404
INIT = '<script src="/assets/javascripts/katex-init.js"></script>'
PAGES = {
    "good": f'{HEAD}<p>Inline <span class="arithmatex">\\(x^2\\)</span>.</p>'
    f'<div class="arithmatex">\\[\\sum_i \\frac{{1}}{{t_i}}\\]</div>'
    f'<pre><code>re.sub(r"\\(", "", s)</code></pre>{INIT}',
    "no_katex": '<p>Math <span class="arithmatex">\\(x^2\\)</span> left raw.</p>',
    "bad_tex": f'{HEAD}<div class="arithmatex">\\[\\frac{{1}}\\]</div>{INIT}',
    "console": "<p>fine</p><script>console.error('boom')</script>",
    "exception": "<p>fine</p><script>undefinedFunction()</script>",
    "missing_asset": '<p>fine</p><img src="/assets/nothing-here.png">',
    "roles": "<p>See :func:<code>pc.em</code> and :class:<code>TensorCircuit</code>.</p>",
    "external": '<p>fine</p><img src="http://127.0.0.1:9/x.png">',
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(ASSETS / "katex", site / "assets" / "katex")
    shutil.copytree(ASSETS / "javascripts", site / "assets" / "javascripts")
    (site / "index.html").write_text(f"<!doctype html><title>home</title>{NO_ICON}<p>home</p>")
    for name, body in PAGES.items():
        (site / name).mkdir()
        (site / name / "index.html").write_text(
            f"<!doctype html><html><head><title>{name}</title>{NO_ICON}</head><body>{body}</body></html>"
        )
    paths = [f"{name}/" for name in PAGES] + ["does-not-exist/"]
    found = check_site(site, pages=paths, math_pages={"good/", "no_katex/"}, fail_on_roles=True)
    return {r.path.rstrip("/"): r for r in found}


def test_good_page_passes(reports) -> None:
    good = reports["good"]
    assert good.failures == []
    assert good.probe["katex"] == 2 and good.probe["arithmatex"] == 2
    assert good.probe["rawMath"] == 0  # the \( inside <pre> is code, not math


def test_untypeset_math_fails(reports) -> None:
    failures = " ".join(reports["no_katex"].failures)
    assert "no typeset math" in failures and "not typeset" in failures and "raw math delimiter" in failures


def test_tex_that_katex_rejects_is_a_console_error(reports) -> None:
    failures = " ".join(reports["bad_tex"].failures)
    assert "katex-init" in failures and "not typeset" in failures


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("console", "console.error: boom"),
        ("exception", "undefinedFunction"),
        ("missing_asset", "HTTP 404"),
        ("does-not-exist", "HTTP 404"),
        ("roles", "2 raw Sphinx role(s)"),
        ("external", "requests leave the local site"),
    ],
)
def test_each_broken_page_fails_for_its_reason(reports, page: str, expected: str) -> None:
    assert expected in " ".join(reports[page].failures), reports[page].failures


def test_bad_site_dir_is_a_value_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="site: expected a built site"):
        check_site(tmp_path)
