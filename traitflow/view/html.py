"""A viewer page as HTML: one shell for every page; the page's data travels as JSON inside it and
``static/app.js`` draws it (tables, token views, Vega-Lite charts).

In the viewer the shell links ``/static/…``; the static report inlines the script, the styles and
the Vega bundle, and carries every page's data, keyed by its route (hash routing, ``#/demo/…``).
"""

import functools
import json
from html import escape
from importlib import resources
from typing import Any

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@functools.cache
def static_text(name: str) -> str:
    if name not in STATIC_FILES:
        raise KeyError(name)
    return resources.files("traitflow.view").joinpath("static", name).read_text(encoding="utf-8")


def _json_for_script(value: Any) -> str:
    # Inside <script>, text such as "</script>" in a model's reply must not reach the HTML parser:
    # "\u003c" is "<" to JSON and JavaScript alike.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def page_html(data: dict[str, Any], title: str) -> str:
    """One viewer page: the shell, linking the viewer's static files, with this page's data."""
    return _shell(title, {"mode": "viewer", "page": data},
                  head='<link rel="stylesheet" href="/static/app.css">\n<script src="/static/vega.js"></script>\n'
                       '<script src="/static/app.js" defer></script>')


def report_html(pages: dict[str, dict[str, Any]], start: str, title: str) -> str:
    """Every page in one file that opens from disk with the network off (no Live chat)."""
    from traitflow.charts import vega_bundle

    # The bundle and app.js are inlined; "</script" cannot occur in either (vega_bundle escapes it).
    script = static_text("app.js").replace("</script", "<\\/script")
    return _shell(title, {"mode": "report", "pages": pages, "start": start},
                  head=f"<style>{static_text('app.css')}</style>\n<script>{vega_bundle()}</script>",
                  tail=f"<script>{script}</script>")


def _shell(title: str, payload: dict[str, Any], head: str, tail: str = "") -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n{head}\n</head>\n<body>\n"
            "<nav id=\"tf-nav\"></nav>\n<main id=\"tf-main\"><p>Loading…</p></main>\n"
            f"<script type=\"application/json\" id=\"tf-data\">{_json_for_script(payload)}</script>\n"
            f"{tail}\n</body>\n</html>\n")
