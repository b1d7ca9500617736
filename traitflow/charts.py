"""Altair charts of traitflow results, rendered to PNG (for Dagster metadata) and self-contained HTML.

Dagster has no chart metadata type; a markdown entry that embeds the PNG as a data URI renders in
the UI's "[Show Markdown]" dialog. Charts are written beside the artifacts too, so they can be
opened without Dagster.
"""

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from traitflow.store.atomic import atomic_write_bytes, atomic_write_text

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

    def write(self, folder: Path) -> dict[str, Path]:
        png, html = folder / f"{self.name}.png", folder / f"{self.name}.html"
        atomic_write_bytes(png, self.png)
        atomic_write_text(html, self.html)
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
    html = vlc.vegalite_to_html(json.dumps(spec), bundle=True)
    return RenderedChart(name=name, png=png, html=html, spec=spec)


def _heatmap(rows: list[dict], value: str, domain: list[float] | None, scheme: str):
    import altair as alt

    labelled = [{**r, "label": f"{r[value]:.2f}" if abs(r[value]) < 100 else f"{r[value]:.0f}"} for r in rows]
    base = alt.Chart(alt.Data(values=labelled)).encode(x=alt.X("layer:O", title="layer"), y=alt.Y("method:N", title=None))
    heat = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(domain=domain, scheme=scheme) if domain else alt.Scale(scheme=scheme),
                        title=value.replace("_", " ")),
        tooltip=["position:N", "method:N", "layer:O", "val_accuracy:Q", "auroc:Q", "cohens_d:Q", "combined:Q"],
    )
    text = base.mark_text(fontSize=9).encode(text="label:N", color=alt.value("white"))
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
