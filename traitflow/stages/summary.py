"""The summary stage (one per experiment, run last): every trait's best vector in one table.

The rows are :func:`traitflow.view.data.experiment_rows`, the viewer's experiment page: one
definition of the cross-trait table, so `summary.json`, the Dagster table and the viewer agree.
"""

from typing import Any

from traitflow.artifacts import BestVector, Summary, VariantDiff
from traitflow.stages.comparison import comparison_keys
from traitflow.stages.context import StageContext, StageOutput, Table

__all__ = ["SUMMARY_COLUMNS", "run_summary"]

# The columns of experiment_rows shown in Dagster's table, with their types (its `links` are the
# viewer's own; the asset's `viewer` link leads there).
SUMMARY_COLUMNS: dict[str, str] = {
    "trait": "string", "position": "string", "component": "string", "method": "string", "layer": "int",
    "val_accuracy": "float", "cohens_d": "float", "steering_variant": "string", "coefficient": "float", "delta": "float",
    "coherence": "float", "rule": "string", "refined_from": "string",
}


def run_summary(ctx: StageContext) -> StageOutput:
    """Write `summary.json` from whatever is materialized (a trait not extracted yet is a row of
    None: said, not invented), with the table and headline numbers for Dagster."""
    from traitflow.view.data import experiment_rows

    exp = ctx.experiment
    rows = experiment_rows(ctx)
    record: dict[str, Any] = {"experiment": exp.name, "traits": rows}
    path = ctx.artifacts.write(Summary, record)
    numbers = {
        "n_traits": len(rows),
        "n_with_best_vector": sum(1 for trait in exp.traits if ctx.artifacts.exists(BestVector, trait)),
        "n_extracted": sum(1 for r in rows if r["layer"] is not None),
        "n_steered": sum(1 for r in rows if r["delta"] is not None),
        "n_comparisons": sum(1 for key in comparison_keys(exp) if ctx.artifacts.exists(VariantDiff, key)),
    }
    table = Table(SUMMARY_COLUMNS, [{k: r[k] for k in SUMMARY_COLUMNS} for r in rows])
    return StageOutput(path, numbers, tables={"table": table})
