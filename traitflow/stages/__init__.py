"""One function per asset: read the upstream artifacts, call the engine, write the artifact.

Each `run_*` function works on one partition and returns a :class:`~traitflow.stages.context.StageOutput`
(the artifact's path, headline numbers, tables and sample texts for the asset's metadata, asset
check outcomes). They know nothing of Dagster: the asset bodies in `assets/` are a loop over
partition keys calling these, and tests call them directly.

- :mod:`.context` — StageContext (what a stage gets), ReadContext (read-only, no model), StageOutput.
- :mod:`.extraction` — responses, vetting, activations, vectors, extraction_eval, logit_lens.
- :mod:`.steering` — steering, cma_es, best_vector.
- :mod:`.inference` — inference_responses, replayed_responses, calibration, projections.
- :mod:`.comparison` — variant_diff.
- :mod:`.summary` — summary (one per experiment): every trait's best vector in one table.
- :mod:`.which_vector` — the one place that decides which vector a stage (or report, export,
  monitor) uses: `vectors_from`, the monitored and compared vectors, CMA-ES refinements.

Artifact files are read and written through :mod:`traitflow.artifacts`, with one exception: a
steering search writes its own files as it goes (:mod:`traitflow.steer.run`): `summary.json` and
`results.jsonl` under :class:`~traitflow.artifacts.Steering`'s names (`file`, `RESULTS_LOG`), and
the answers of each run in `responses/<config>.json` beside them.
Charts are written beside their artifact by the chart code.
"""
