"""Research views over an experiment's stored artifacts: the text, the tokens, the numbers.

- :mod:`traitflow.view.urls`   where each page lives (the viewer's routes; Dagster metadata links to them)
- :mod:`traitflow.view.data`   each page's data, read from the artifacts (no model, no Dagster)
- :mod:`traitflow.view.html`   a page as HTML: one shell, the page's data as JSON, ``static/app.js`` draws it
- :mod:`traitflow.view.app`    ``traitflow view``: the local web app, with Live chat through ``traitflow serve``
- :mod:`traitflow.view.report` ``traitflow report EXPERIMENT --html OUT``: every view but Live chat in one file

Pages: Experiment (every trait's best vector), Extraction (method × layer heatmaps, vetting samples),
Steering sweep (the search's runs and a browser of the steered answers), Trait dynamics (per-token
scores of a prompt set's responses), Model comparison (effect sizes, A's and B's text side by side)
and Live chat. Charts are Vega-Lite, drawn by the bundle :func:`traitflow.charts.vega_bundle`
(inlined or served locally: nothing is fetched from a CDN).
"""
