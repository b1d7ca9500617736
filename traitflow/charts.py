"""Altair charts of traitflow results, rendered to PNG (for Dagster metadata) and self-contained HTML.

Dagster has no chart metadata type; a markdown entry that embeds the PNG as a data URI renders in
the UI's "[Show Markdown]" dialog. Charts are written beside the artifacts too, so they can be
opened without Dagster.
"""

import base64
import functools
import json
import os
import re
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
    """PNG (shrunk until it fits MAX_PNG_BYTES) and standalone HTML of an Altair chart."""
    import vl_convert as vlc

    spec = chart.to_dict()
    scale = 1.0
    png = vlc.vegalite_to_png(json.dumps(spec), scale=scale)
    while len(png) > MAX_PNG_BYTES and scale > 0.3:
        scale *= 0.75
        png = vlc.vegalite_to_png(json.dumps(spec), scale=scale)
    return RenderedChart(name=name, png=png, html=standalone_html(spec, name), spec=spec)


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


def _heatmap(rows: list[dict], value: str, domain: list[float] | None, scheme: str):
    import altair as alt

    labelled = [{**r, "label": _label(r[value])} for r in rows]
    base = alt.Chart(alt.Data(values=labelled)).encode(x=alt.X("layer:O", title="layer"), y=alt.Y("method:N", title=None))
    heat = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(domain=domain, scheme=scheme) if domain else alt.Scale(scheme=scheme),
                        title=value.replace("_", " ")),
        tooltip=["position:N", "method:N", "layer:O", "val_accuracy:Q", "auroc:Q", "cohens_d:Q", "combined:Q"],
    )
    # An undefined cell (null) has no colour: its "n/a" is grey, not white on white.
    text = base.mark_text(fontSize=9).encode(text="label:N",
                                             color=alt.condition(f"datum.{value} === null", alt.value("gray"), alt.value("white")))
    n_layers = len({r["layer"] for r in rows})
    n_methods = len({r["method"] for r in rows})
    return (heat + text).properties(width=max(120, 24 * n_layers), height=20 * n_methods,
                                    title=f"{rows[0]['position']}: {value.replace('_', ' ')}")


def eval_heatmap(scores: list[dict], trait: str) -> RenderedChart:
    """Layer × method heatmaps of held-out accuracy and Cohen's d, one row per position.

    Accuracy saturates on easy traits; Cohen's d still shows where the separation is largest.
    """
    import altair as alt

    rows = []
    for position in dict.fromkeys(s["position"] for s in scores):
        subset = [s for s in scores if s["position"] == position]
        rows.append(alt.hconcat(_heatmap(subset, "val_accuracy", [0, 1], "viridis"),
                                _heatmap(subset, "cohens_d", None, "magma")).resolve_scale(color="independent"))
    chart = alt.vconcat(*rows).properties(title=f"{trait}: held-out evaluation per method x layer")
    return render(chart, "eval_heatmap")


def steering_chart(log_entries: list[dict], trait: str, min_coherence: float = 77.0, direction: int = 1) -> RenderedChart:
    """Trait and coherence against the coefficient multiplier, one line per layer, plus the best
    valid delta per layer; the baseline as a rule."""
    import altair as alt

    baseline = next((e["result"] for e in log_entries if e.get("type") == "baseline"), {})
    rows = []
    for entry in log_entries:
        if entry.get("type") is not None or "config" not in entry:
            continue
        v, r = entry["config"]["vectors"][0], entry["result"]
        for metric in ("trait_mean", "coherence_mean"):
            if r.get(metric) is not None:
                rows.append({"layer": f"L{v['layer']}", "multiplier": v["multiplier"], "metric": metric.replace("_mean", ""),
                             "value": r[metric]})
    lines = alt.Chart(alt.Data(values=rows)).mark_line(point=True).encode(
        x=alt.X("multiplier:Q", title="coefficient / layer norm"),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 100])),
        color=alt.Color("layer:N"),
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
            best[key] = {"layer": key, "delta": delta, "multiplier": v["multiplier"]}
    bars = alt.Chart(alt.Data(values=list(best.values()) or [{"layer": "none", "delta": 0, "multiplier": 0}])).mark_bar().encode(
        x=alt.X("layer:N", title="layer"), y=alt.Y("delta:Q", title="best valid trait delta"),
        tooltip=["layer:N", "delta:Q", "multiplier:Q"],
    ).properties(width=120, height=160, title=f"best delta (coherence >= {min_coherence:g})")
    chart = alt.hconcat(*panels, bars).properties(title=f"{trait}: steering search (dashed: unsteered)")
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
