"""``traitflow report EXPERIMENT --html OUT``: every view but Live chat in one self-contained HTML
file (data, script, styles and the Vega bundle inlined), to send by mail or drop in a bucket. It
opens from ``file://`` with the network off.

Pages are the viewer's, keyed by their routes; Trait dynamics carries every prompt of each
materialized prompt set × variant (the viewer loads one prompt at a time instead).
"""

from pathlib import Path
from typing import Any

from traitflow.artifacts import Projections, Steering, VariantDiff
from traitflow.errors import TraitflowError
from traitflow.stages.comparison import comparison_key
from traitflow.stages.context import ReadContext
from traitflow.stages.which_vector import steering_variants
from traitflow.store.atomic import atomic_write_text
from traitflow.view import data
from traitflow.view.html import report_html
from traitflow.view.urls import page_path


def report_pages(ctx: ReadContext) -> dict[str, dict[str, Any]]:
    """Every page of the experiment that has something to show, by route."""
    exp = ctx.experiment
    name = exp.name
    pages = {page_path(name, "experiment"): data.experiment_page(ctx)}
    for trait in exp.traits:
        pages[page_path(name, "extraction", trait=trait)] = data.extraction_page(ctx, trait)
        for variant in steering_variants(exp):
            if ctx.artifacts.exists(Steering, trait, variant):
                pages[page_path(name, "steering", trait=trait, variant=variant)] = data.steering_page(ctx, trait, variant)
    for prompt_set in exp.spec.inference.prompt_sets:
        for variant in exp.inference_variants:
            if ctx.artifacts.exists(Projections, prompt_set, variant):
                pages[page_path(name, "dynamics", prompt_set=prompt_set, variant=variant)] = data.dynamics_page(
                    ctx, prompt_set, variant, all_items=True)
    for c in exp.spec.comparisons:
        if ctx.artifacts.exists(VariantDiff, comparison_key(c.a, c.b, c.prompt_set)):
            pages[page_path(name, "comparison", a=c.a, b=c.b, prompt_set=c.prompt_set)] = data.comparison_page(
                ctx, c.a, c.b, c.prompt_set, all_traits=True)
    pages[page_path(name, "benchmarks")] = data.benchmarks_page(ctx, all_items=True)
    pages[page_path(name, "chat")] = data.chat_page(ctx, None)
    return pages


def write_html_report(ctx: ReadContext, out: Path) -> Path:
    """Write the report to `out` atomically (a file that exists is complete); returns its path."""
    pages = report_pages(ctx)
    html = report_html(pages, start=page_path(ctx.experiment.name, "experiment"),
                       title=f"traitflow report · {ctx.experiment.name}")
    out = Path(out)
    if out.is_dir():
        out = out / f"{ctx.experiment.name}-report.html"
    try:
        atomic_write_text(out, html)
    except OSError as exc:  # a folder that cannot be made or written: the user's to fix, in one line
        raise TraitflowError(f"--html {out}: cannot write it ({exc.strerror or exc})") from None
    return out
