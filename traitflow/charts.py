"""Altair charts of traitflow results, rendered to PNG (for Dagster metadata) and self-contained HTML.

Dagster has no chart metadata type; a markdown entry that embeds the PNG as a data URI renders in
the UI's "[Show Markdown]" dialog. Charts are written beside the artifacts too, so they can be
opened without Dagster.
"""

import base64
import functools
import json
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from html import escape as html_escape
from pathlib import Path
from typing import TYPE_CHECKING

from traitflow.store.atomic import atomic_write_text

if TYPE_CHECKING:
    from traitflow.store import ArtifactStore

MAX_PNG_BYTES = 100_000


@dataclass(frozen=True)
class RenderedChart:
    name: str
    png: bytes
    html: str
    spec: dict

    def markdown(self, title: str) -> str:
        encoded = base64.b64encode(self.png).decode("ascii")
        return f"**{title}**\n\n![{self.name}](data:image/png;base64,{encoded})"

    def write(self, folder: Path, store: "ArtifactStore | None" = None) -> dict[str, Path]:
        """Beside the artifact, in its store (a local folder or a bucket)."""
        from traitflow.store import ArtifactStore

        store = store or ArtifactStore(folder)
        png, html = folder / f"{self.name}.png", folder / f"{self.name}.html"
        store.write_bytes(png, self.png)
        store.write_text(html, self.html)
        return {"png": png, "html": html}


def render(chart, name: str) -> RenderedChart:
    """PNG and standalone HTML of an Altair chart. The PNG is deflated again (lossless, see
    :func:`recompress_png`); only a chart still over MAX_PNG_BYTES is drawn smaller, a last resort:
    charts that grow with the model (layers) lay themselves out to fit at full size instead."""
    import vl_convert as vlc

    spec = chart.to_dict()
    scale = 1.0
    png = recompress_png(vlc.vegalite_to_png(json.dumps(spec), scale=scale))
    while len(png) > MAX_PNG_BYTES and scale > 0.3:
        scale *= 0.75
        png = recompress_png(vlc.vegalite_to_png(json.dumps(spec), scale=scale))
    return RenderedChart(name=name, png=png, html=standalone_html(spec, name), spec=spec)


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset:offset + 4])
        chunks.append((png[offset + 4:offset + 8], png[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return chunks


def recompress_png(png: bytes) -> bytes:
    """The same PNG, its pixel data deflated at zlib's best level. vl-convert favours speed: its
    PNGs of flat-coloured charts (heatmap cells) shrink 5-7x this way, pixel for pixel the same, so
    charts stay full size under MAX_PNG_BYTES. Anything unexpected: `png` unchanged."""
    try:
        chunks = _png_chunks(png)
        idat = b"".join(data for kind, data in chunks if kind == b"IDAT")
        packed = zlib.compress(zlib.decompress(idat), 9)
    except (struct.error, zlib.error):
        return png
    if not idat or len(packed) >= len(idat):
        return png
    out, written = [png[:8]], False
    for kind, data in chunks:
        if kind == b"IDAT":
            if written:
                continue
            kind, data, written = b"IDAT", packed, True
        out.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
    return b"".join(out)


BUNDLE_FORMAT = 1  # raise when what is cached changes (e.g. its escaping): old files are then ignored


@functools.lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (vl-convert's bundle; no CDN: charts must open
    offline). Building it takes vl-convert ~1.6 s per process, so it is kept per user, per
    vl-convert version, in `$XDG_CACHE_HOME/traitflow` (else `~/.cache/traitflow`)."""
    import vl_convert as vlc

    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "traitflow"  # a relative one is ignored (XDG)
    path = cache / f"vega-bundle-{vlc.__version__}-{BUNDLE_FORMAT}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    # Inline in <script>, a literal "</script" would end it early; "<\/script" is the same in JavaScript.
    script = re.sub(r"</(?=script)", lambda _: "<\\/", vlc.javascript_bundle(), flags=re.IGNORECASE)
    try:
        atomic_write_text(path, script)
    except OSError:  # no writable cache: build it again next time
        pass
    return script


def standalone_html(spec: dict, title: str) -> str:
    """One HTML file that draws the Vega-Lite `spec` with everything it needs inlined."""
    # Text such as "</script>" or "<!--<script" (model tokens are charted) must not reach the HTML
    # parser inside an inline script; "\u003c" is the same character to JSON and JavaScript.
    data = json.dumps(spec).replace("<", "\\u003c")
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"UTF-8\">\n"
            f"<title>{html_escape(title)}</title>\n<script>{vega_bundle()}</script>\n</head>\n<body>\n"
            '<div id="vega-chart"></div>\n'
            f"<script>vegaEmbed('#vega-chart', {data}, {{\"renderer\": \"svg\"}}).catch(console.error);</script>\n"
            "</body>\n</html>\n")


def _label(value: float | None) -> str:
    """A heatmap cell's text; an undefined metric (null in the artifact) reads ``n/a``."""
    if value is None:
        return "n/a"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


# How the extraction heatmap stays legible on deep models: up to LABELLED_LAYERS layers, each
# cell is wide enough to print its value; beyond, cells are narrower and unlabelled (the colour
# and the tooltip carry the value), and the layers are split into rows of at most LAYERS_PER_ROW,
# so an 80-layer model is two rows of 40 cells of CELL_PX each, not one strip scaled down until
# its PNG fits MAX_PNG_BYTES (a 32-layer model came out 600 px wide, cells unreadable).
LABELLED_LAYERS = 16
LAYERS_PER_ROW = 40
LABELLED_CELL_PX = 24
CELL_PX = 14
METHOD_ROW_PX = 20
UNDEFINED_FILL = "#e4e4e4"


def layer_rows(layers: list[int]) -> list[list[int]]:
    """`layers` split into rows of at most LAYERS_PER_ROW, as even as possible (50 -> 25 + 25)."""
    n_rows = max(1, -(-len(layers) // LAYERS_PER_ROW))
    size = -(-len(layers) // n_rows)
    return [layers[i:i + size] for i in range(0, len(layers), size)]


def _heatmap(rows: list[dict], value: str, domain: list[float] | None, scheme: str, title: str, labels: bool, legend: bool):
    import altair as alt

    labelled = [{**r, "label": _label(r[value])} for r in rows]
    base = alt.Chart(alt.Data(values=labelled)).encode(x=alt.X("layer:O", title="layer"), y=alt.Y("method:N", title=None))
    scale = alt.Scale(domain=domain, scheme=scheme) if domain else alt.Scale(scheme=scheme)
    heat = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=scale, title=value.replace("_", " "), legend=alt.Legend() if legend else None),
        tooltip=["position:N", "method:N", "layer:O", "val_accuracy:Q", "auroc:Q", "cohens_d:Q", "combined:Q"],
    )
    n_layers = len({r["layer"] for r in rows})
    n_methods = len({r["method"] for r in rows})
    size = {"width": max(120, (LABELLED_CELL_PX if labels else CELL_PX) * n_layers), "height": METHOD_ROW_PX * n_methods,
            "title": title}
    # An undefined cell (null) gets no colour from the scale: the light grey beneath shows it,
    # so it is not mistaken for the palest value of a scale.
    backdrop = base.mark_rect(color=UNDEFINED_FILL)
    if not labels:
        return (backdrop + heat).properties(**size)
    # ... and its label "n/a" is grey, not white.
    text = base.mark_text(fontSize=9).encode(text="label:N",
                                             color=alt.condition(f"datum.{value} === null", alt.value("gray"), alt.value("white")))
    return (backdrop + heat + text).properties(**size)


def _domain(rows: list[dict], value: str) -> list[float] | None:
    """The colour domain of a metric over all of a position's rows, so every row of layers shares
    one scale (None: nothing defined, Vega's default)."""
    values = [r[value] for r in rows if isinstance(r.get(value), (int, float)) and math.isfinite(r[value])]
    return [min(values), max(values)] if values and min(values) < max(values) else None


def eval_heatmap(scores: list[dict], trait: str) -> RenderedChart:
    """Layer × method heatmaps of held-out accuracy and Cohen's d, one row per position (and per
    LAYERS_PER_ROW layers on deep models).

    Accuracy saturates on easy traits; Cohen's d still shows where the separation is largest.
    """
    import altair as alt

    cells = []  # accuracy, Cohen's d; accuracy, Cohen's d; … laid out two to a row
    for position in dict.fromkeys(s["position"] for s in scores):
        subset = [s for s in scores if s["position"] == position]
        layers = sorted({s["layer"] for s in subset})
        labels = len(layers) <= LABELLED_LAYERS
        d_domain = _domain(subset, "cohens_d")
        chunks = layer_rows(layers)
        for index, chunk in enumerate(chunks):
            part = [s for s in subset if s["layer"] in set(chunk)]
            span = "" if len(chunks) == 1 else f", layers {chunk[0]}-{chunk[-1]}"
            # One legend per position: the rows of layers share its colour domains.
            cells += [_heatmap(part, "val_accuracy", [0, 1], "viridis", f"{position}: val accuracy{span}", labels, legend=index == 0),
                      _heatmap(part, "cohens_d", d_domain, "magma", f"{position}: cohens d{span}", labels, legend=index == 0)]
    # A grid (not rows of pairs): every Cohen's d heatmap starts at the same x, legend or not.
    chart = alt.concat(*cells, columns=2).resolve_scale(color="independent").properties(
        title=f"{trait}: held-out evaluation per method x layer")
    return render(chart, "eval_heatmap")


STEERING_LEGEND_LAYERS = 10  # more steered layers than this: lines coloured on a gradient, not one legend entry each


def steering_chart(log_entries: list[dict], trait: str, min_coherence: float = 77.0, direction: int = 1) -> RenderedChart:
    """Trait and coherence against the coefficient multiplier, one line per layer, plus the best
    valid delta per layer; the baseline as a rule.

    Steering many layers (a deep model) keeps every bar CELL_PX wide at least: the bars then get a
    row of their own, and the lines a colour gradient over the layer number instead of a legend
    entry per layer."""
    import altair as alt

    baseline = next((e["result"] for e in log_entries if e.get("type") == "baseline"), {})
    rows = []
    for entry in log_entries:
        if entry.get("type") is not None or "config" not in entry:
            continue
        v, r = entry["config"]["vectors"][0], entry["result"]
        for metric in ("trait_mean", "coherence_mean"):
            if r.get(metric) is not None:
                rows.append({"layer": f"L{v['layer']}", "layer_number": v["layer"], "multiplier": v["multiplier"],
                             "metric": metric.replace("_mean", ""), "value": r[metric]})
    n_layers = len({r["layer"] for r in rows})
    many = n_layers > STEERING_LEGEND_LAYERS
    colour = (alt.Color("layer_number:Q", title="layer", scale=alt.Scale(scheme="viridis")) if many
              else alt.Color("layer:N", sort=alt.EncodingSortField("layer_number")))
    lines = alt.Chart(alt.Data(values=rows)).mark_line(point=not many).encode(
        x=alt.X("multiplier:Q", title="coefficient / layer norm"),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 100])),
        color=colour, detail="layer:N",
        tooltip=["layer:N", "multiplier:Q", "value:Q"],
    ).properties(width=220, height=160)
    panels = []
    for metric in ("trait", "coherence"):
        panel = lines.transform_filter(alt.datum.metric == metric).properties(title=metric)
        base_value = baseline.get(f"{metric}_mean")
        if base_value is not None:
            rule = alt.Chart(alt.Data(values=[{"value": base_value}])).mark_rule(strokeDash=[4, 4], color="gray").encode(y="value:Q")
            panel = panel + rule
        panels.append(panel)
    best: dict[str, dict] = {}
    base_trait = baseline.get("trait_mean")
    for entry in log_entries:
        if entry.get("type") is not None or "config" not in entry or base_trait is None:
            continue
        v, r = entry["config"]["vectors"][0], entry["result"]
        if r.get("trait_mean") is None or (r.get("coherence_mean") or 0) < min_coherence:
            continue
        delta = direction * (r["trait_mean"] - base_trait)
        key = f"L{v['layer']}"
        if key not in best or delta > best[key]["delta"]:
            best[key] = {"layer": key, "layer_number": v["layer"], "delta": delta, "multiplier": v["multiplier"]}
    bars = alt.Chart(alt.Data(values=list(best.values()) or [{"layer": "none", "layer_number": 0, "delta": 0, "multiplier": 0}])
                     ).mark_bar().encode(
        # by layer number: L10 after L9, not after L1
        x=alt.X("layer:N", title="layer", sort=alt.EncodingSortField("layer_number")),
        y=alt.Y("delta:Q", title="best valid trait delta"),
        tooltip=["layer:N", "delta:Q", "multiplier:Q"],
    ).properties(width=max(120, CELL_PX * n_layers), height=160, title=f"best delta (coherence >= {min_coherence:g})")
    title = f"{trait}: steering search (dashed: unsteered)"
    chart = (alt.vconcat(alt.hconcat(*panels), bars) if many else alt.hconcat(*panels, bars)).properties(title=title)
    return render(chart, "steering_search")


def projection_charts(record: dict, top_traits: int = 3) -> RenderedChart:
    """For the prompt whose response moves most: a per-token trajectory of the top traits, and a
    tokens × traits heatmap (each trait at its first monitored layer)."""
    import altair as alt

    def spread(item: dict, trait: str) -> float:
        layer = str(record["traits"][trait]["layers"][0])
        values = item["scores"][trait][layer][item["prompt_len"]:]
        return (max(values) - min(values)) if values else 0.0

    item = max(record["items"], key=lambda it: sum(spread(it, t) for t in record["traits"]))
    ranked = sorted(record["traits"], key=lambda t: -spread(item, t))
    rows = []
    tokens = item["tokens"][item["prompt_len"]:]
    for trait in ranked:
        layer = str(record["traits"][trait]["layers"][0])
        values = item["scores"][trait][layer][item["prompt_len"]:]
        for index, (token, value) in enumerate(zip(tokens, values, strict=False)):
            rows.append({"trait": trait, "index": index, "token": token.replace("Ġ", " ").replace("Ċ", "\\n"), "score": value})
    top = [r for r in rows if r["trait"] in ranked[:top_traits]]
    trajectory = alt.Chart(alt.Data(values=top)).mark_line(point=True).encode(
        x=alt.X("index:Q", title="response token"), y=alt.Y("score:Q", title="h·v̂"), color="trait:N",
        tooltip=["trait:N", "token:N", "score:Q"],
    ).properties(width=420, height=160, title=f"prompt {item['id']}: per-token projections")
    heat = alt.Chart(alt.Data(values=rows)).mark_rect().encode(
        x=alt.X("index:O", title=None, axis=alt.Axis(labels=False, ticks=False)), y=alt.Y("trait:N", title=None),
        color=alt.Color("score:Q", scale=alt.Scale(scheme="redblue", domainMid=0)),
        tooltip=["trait:N", "token:N", "score:Q"],
    ).properties(width=420, height=18 * len(ranked), title="tokens × traits")
    return render(alt.vconcat(trajectory, heat).properties(title=f"{record['prompt_set']} on {record['variant']}"), "projections")


def comparison_charts(record: dict) -> RenderedChart:
    """Effect size (peak Cohen's d, B − A) by trait, and the per-token delta of the optimism-most-moved
    trait for the prompts with the largest shift."""
    import altair as alt

    effect = [{"trait": t, "d": info["peak"]["cohens_d"], "layer": info["peak"]["layer"]} for t, info in record["traits"].items()]
    bars = alt.Chart(alt.Data(values=effect)).mark_bar().encode(
        x=alt.X("d:Q", title="peak Cohen's d (B − A)"), y=alt.Y("trait:N", sort="-x", title=None),
        color=alt.condition(alt.datum.d > 0, alt.value("#2a9d8f"), alt.value("#e76f51")), tooltip=["trait:N", "d:Q", "layer:O"],
    ).properties(width=260, height=22 * len(effect), title="effect size by trait")
    moved = max(record["traits"], key=lambda t: abs(record["traits"][t]["peak"]["cohens_d"] or 0.0))  # null: undefined d
    rows = []
    for prompt in record["traits"][moved]["top_prompts"][:3]:
        for index, (token, delta) in enumerate(zip(prompt["tokens"], prompt["deltas"], strict=False)):
            rows.append({"prompt": str(prompt["id"]), "index": index, "token": token, "delta": delta})
    lines = alt.Chart(alt.Data(values=rows)).mark_line(point=True).encode(
        x=alt.X("index:Q", title="response token"), y=alt.Y("delta:Q", title="B − A"), color=alt.Color("prompt:N"),
        tooltip=["prompt:N", "token:N", "delta:Q"],
    ).properties(width=320, height=160, title=f"{moved}: per-token delta, largest shifts")
    chart = alt.hconcat(bars, lines).properties(title=f"{record['a']} → {record['b']} on {record['prompt_set']}")
    return render(chart, "variant_diff")


def capability_chart(record: dict) -> RenderedChart:
    """The capability tax of one benchmark × variant: accuracy with its 95 % interval per condition
    (multiple choice), or next-token CE and KL from the unsteered model per condition (ce_loss)."""
    import altair as alt

    conditions = list(record["conditions"])
    title = f"{record['benchmark']} on {record['variant']} (n = {record['n']})"
    if record["benchmark"] == "ce_loss":
        rows = [{"condition": c, "metric": metric, "value": row[metric]}
                for c, row in record["conditions"].items() for metric in ("ce", "kl")]
        chart = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
            x=alt.X("value:Q", title=None), y=alt.Y("condition:N", sort=conditions, title=None),
            color=alt.Color("metric:N", legend=None), column=alt.Column("metric:N", title=None),
            tooltip=["condition:N", "metric:N", alt.Tooltip("value:Q", format=".4f")],
        ).properties(width=220, height=24 * len(conditions), title=title)
        return render(chart, "capability")
    rows = [{"condition": c, "accuracy": row["accuracy"], "low": (row["ci95"] or [None, None])[0],
             "high": (row["ci95"] or [None, None])[1]} for c, row in record["conditions"].items()]
    base = alt.Chart(alt.Data(values=rows)).encode(y=alt.Y("condition:N", sort=conditions, title=None))
    points = base.mark_point(filled=True, size=80).encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (95 % bootstrap interval)"),
        tooltip=["condition:N", alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("low:Q", format=".3f"),
                 alt.Tooltip("high:Q", format=".3f")])
    bars = base.mark_rule(strokeWidth=2).encode(x="low:Q", x2="high:Q")
    chart = (bars + points).properties(width=360, height=28 * len(conditions), title=title)
    return render(chart, "capability")
