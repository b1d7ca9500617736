"""The viewer's routes, written down once: the app serves them, pages link to them, and Dagster
metadata links each partition to its page.

A page is ``/<experiment>/<page>?<params>``; the experiment page is ``/<experiment>/``. Trait and
prompt-set names contain ``/``, so they go in the query string.

The viewer's address for links made outside it (Dagster metadata) is ``TRAITFLOW_VIEW_URL``,
by default ``http://127.0.0.1:8766``, where ``traitflow view`` listens unless told otherwise.
"""

import os
from urllib.parse import quote, urlencode

DEFAULT_PORT = 8766
VIEW_URL_ENV = "TRAITFLOW_VIEW_URL"

# page -> the query parameters it takes (the first ones name what it shows; the rest pick within it)
PAGES: dict[str, tuple[str, ...]] = {
    "experiment": (),
    "extraction": ("trait",),
    "steering": ("trait", "variant", "run"),
    "dynamics": ("prompt_set", "variant", "prompt", "trait"),
    "comparison": ("a", "b", "prompt_set", "trait", "prompt"),
    "benchmarks": ("benchmark", "variant"),
    "chat": ("variant",),
}


def base_url() -> str:
    return (os.environ.get(VIEW_URL_ENV) or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")


def page_path(experiment: str, page: str, **params: str | None) -> str:
    """``/<experiment>/<page>?…`` (no host): the route of one page."""
    if page not in PAGES:
        raise ValueError(f"unknown page {page!r}")
    unknown = set(params) - set(PAGES[page])
    if unknown:
        raise ValueError(f"page {page!r} takes no {sorted(unknown)}")
    query = urlencode({k: v for k, v in params.items() if v is not None}, safe="/")
    path = f"/{quote(experiment, safe='')}/" + ("" if page == "experiment" else page)
    return path + (f"?{query}" if query else "")


def page_url(experiment: str, page: str, **params: str | None) -> str:
    """The full address of a page in the viewer (``TRAITFLOW_VIEW_URL``)."""
    return base_url() + page_path(experiment, page, **params)


def asset_page(experiment: str, asset: str, dims: dict[str, str]) -> str | None:
    """The page that shows one partition of an asset, or None when no page does."""
    trait, variant = dims.get("trait"), dims.get("variant")
    if asset in ("responses", "vetting", "activations", "vectors", "extraction_eval", "logit_lens"):
        return page_url(experiment, "extraction", trait=trait)
    if asset in ("steering", "cma_es"):
        return page_url(experiment, "steering", trait=trait, variant=variant)
    if asset == "best_vector":
        return page_url(experiment, "extraction", trait=trait)
    if asset in ("inference_responses", "replayed_responses", "inference_activations", "projections"):
        return page_url(experiment, "dynamics", prompt_set=dims.get("prompt_set"), variant=variant)
    if asset == "variant_diff":
        a_b, _, prompt_set = dims.get("comparison", "").partition("/")
        a, _, b = a_b.partition("_vs_")
        return page_url(experiment, "comparison", a=a, b=b, prompt_set=prompt_set)
    if asset == "benchmark":
        name, _, variant = dims.get("benchmark", "").partition("/")
        return page_url(experiment, "benchmarks", benchmark=name, variant=variant)
    if asset in ("summary", "calibration"):
        return page_url(experiment, "experiment")
    return None
