"""Chart files: the standalone HTML draws offline, Vega's bundle is built once per user, and charts
that grow with the model's layers stay legible (full size, cells >= 10 px) within MAX_PNG_BYTES."""

import json

import pytest

from tests.test_webserver import CHROMIUM, CHROMIUM_FLAGS, require_chromium
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
    require_chromium()
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


# --------------------------------------------------------------------------- legible at many layers
def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk."""
    import struct

    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def deep_scores(n_layers: int) -> list[dict]:
    """Every method × layer × position of a deep model, values varying cell to cell (the PNG's
    worst case: nothing compresses), one method with undefined Cohen's d here and there."""
    import random

    rnd = random.Random(0)
    return [{"position": position, "component": "residual", "method": method, "layer": layer, "val_accuracy": rnd.random(),
             "auroc": rnd.random(), "cohens_d": None if method == "random_baseline" and layer % 7 == 0 else rnd.uniform(-2, 30),
             "combined": rnd.random()}
            for position in ("prompt[-1]", "response[:5]")
            for method in ("probe", "mean_diff", "pca", "gradient", "random_baseline") for layer in range(n_layers)]


def marks(spec, kind: str) -> int:
    """How many marks of `kind` (rect, text, bar) a Vega-Lite spec draws."""
    if isinstance(spec, dict):
        mark = spec.get("mark")
        own = int(mark == kind or (isinstance(mark, dict) and mark.get("type") == kind))
        return own + sum(marks(v, kind) for v in spec.values())
    if isinstance(spec, list):
        return sum(marks(v, kind) for v in spec)
    return 0


def test_eval_heatmap_of_80_layers_keeps_every_cell_legible():
    chart = charts.eval_heatmap(deep_scores(80), "deep/trait")
    assert len(chart.png) <= charts.MAX_PNG_BYTES
    width, height = png_size(chart.png)
    rows = charts.layer_rows(list(range(80)))
    per_row = max(len(r) for r in rows)
    assert per_row <= charts.LAYERS_PER_ROW and len(rows) == 2
    # Each row holds an accuracy and a Cohen's d heatmap side by side: 2 × per_row cells across,
    # so the PNG is at least that many 10 px cells wide (it was ~1 px each, shrunk to fit).
    assert width / (2 * per_row) >= 10, (width, height)
    # 2 positions × 2 rows of layers, 5 methods each: at least 10 px per method row as well.
    assert height / (2 * len(rows) * 5) >= 10, (width, height)
    assert marks(chart.spec, "text") == 0  # 80 layers: no cell labels (colour and tooltip carry the value)
    assert marks(chart.spec, "rect") == 2 * (2 * 2 * len(rows))  # each heatmap: its cells over a grey backdrop


def test_eval_heatmap_of_a_few_layers_labels_its_cells():
    chart = charts.eval_heatmap(scores(), "toy/optimism")  # 6 layers
    assert marks(chart.spec, "text") == 2  # accuracy and Cohen's d: each cell prints its value
    assert marks(chart.spec, "rect") == 2 * 2
    width, _ = png_size(chart.png)
    assert width >= 2 * 6 * charts.LABELLED_CELL_PX and len(chart.png) <= charts.MAX_PNG_BYTES


def test_steering_chart_of_80_layers_keeps_every_bar_legible():
    # A plausible search: the trait rises with the multiplier, coherence falls, more in the middle layers.
    entries = [{"type": "header"}, {"type": "baseline", "result": {"trait_mean": 20.0, "coherence_mean": 95.0}}]
    for layer in range(80):
        for step in range(1, 6):
            m = 0.2 * step
            entries.append({"result": {"trait_mean": 20 + 70 * m * (1 - abs(layer - 40) / 80), "coherence_mean": 98 - 20 * m * layer / 80},
                            "config": {"vectors": [{"layer": layer, "multiplier": m, "weight": 10 * m}]}})
    chart = charts.steering_chart(entries, "deep/trait")
    assert len(chart.png) <= charts.MAX_PNG_BYTES
    width, _ = png_size(chart.png)
    assert width / 80 >= 10, width  # the best-delta bars: one per layer, on a row of their own
    bars = chart.spec["vconcat"][1]
    assert bars["width"] >= 10 * 80 and bars["encoding"]["x"]["sort"] == {"field": "layer_number"}  # L10 after L9


def test_recompressing_a_png_keeps_its_pixels():
    import zlib

    import vl_convert as vlc

    raw = vlc.vegalite_to_png(json.dumps(charts.eval_heatmap(scores(), "t").spec))
    smaller = charts.recompress_png(raw)
    assert len(smaller) < len(raw) and png_size(smaller) == png_size(raw)

    def pixels(png: bytes) -> bytes:
        return zlib.decompress(b"".join(data for kind, data in charts._png_chunks(png) if kind == b"IDAT"))

    assert pixels(smaller) == pixels(raw)
    assert charts.recompress_png(b"not a png") == b"not a png"
