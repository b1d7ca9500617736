"""Chart files: the standalone HTML draws offline, and Vega's bundle is built once per user."""

import os
from pathlib import Path

import pytest

from tests.test_webserver import CHROMIUM, CHROMIUM_FLAGS
from traitflow import charts


def scores() -> list[dict]:
    return [{"position": "response[:5]", "method": method, "layer": layer, "val_accuracy": 0.5 + layer / 20,
             "auroc": 0.6, "cohens_d": layer * 0.7 if method == "probe" else None, "combined": 0.5}
            for method in ("mean_diff", "probe") for layer in range(6)]


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    charts.vega_bundle.cache_clear()
    yield tmp_path / "cache" / "traitflow"
    charts.vega_bundle.cache_clear()


def test_the_bundle_is_built_once_and_kept(fresh_cache):
    import vl_convert as vlc

    first = charts.vega_bundle()
    kept = fresh_cache / f"vega-bundle-{vlc.__version__}-{charts.BUNDLE_FORMAT}.js"
    assert kept.read_text(encoding="utf-8") == first and "vegaEmbed" in first
    assert "</script" not in first.lower()  # it is inlined in a <script> element
    kept.write_text(first + "\n// read from the cache\n", encoding="utf-8")
    charts.vega_bundle.cache_clear()
    assert charts.vega_bundle().endswith("// read from the cache\n")


def test_standalone_html_draws_with_the_network_off(fresh_cache, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    trait = "toy/<!--<script>a</script>optimism"  # text that must not end (or hide the end of) the inline script
    chart = charts.eval_heatmap(scores(), trait)
    files = chart.write(tmp_path / "out")
    assert chart.png.startswith(b"\x89PNG")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(files["html"].as_uri())
            page.locator("#vega-chart svg").first.wait_for(timeout=20_000)
            cells = page.locator("#vega-chart svg path[aria-roledescription='rect mark'], #vega-chart svg .mark-rect path").count()
            title = page.locator("#vega-chart svg").first.text_content()
        finally:
            browser.close()
    assert errors == []
    assert cells >= 18  # 2 methods x 6 layers of accuracy, 6 of Cohen's d (undefined cells draw no colour)
    assert trait in title
