"""The benchmark stage: one capability benchmark of one variant under every condition of its spec
(`benchmarks:`), partition `<benchmark>/<variant>`.

Multiple choice: accuracy (length-normalised log-likelihood, :mod:`traitflow.capability.score`)
with a bootstrap 95 % interval, and every item's prediction per condition. ``ce_loss``: next-token
cross-entropy on neutral text and KL(condition ‖ unsteered) per token. Conditions are
:mod:`traitflow.capability.conditions`.
"""

import os
from typing import Any

from traitflow.artifacts import Benchmark
from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment
from traitflow.stages.context import Markdown, StageContext, StageOutput, Table, markdown_table

__all__ = ["MEMORY_BUDGET_ENV", "benchmark_keys", "benchmark_variants", "run_benchmark"]

# A setting, not a spec field (it changes no result): the memory a scoring batch may take, in MB.
# Over it, the batch size halves, as on a real out-of-memory (traitflow.capability.score).
MEMORY_BUDGET_ENV = "TRAITFLOW_MEMORY_BUDGET_MB"


def benchmark_variants(exp: Experiment, spec: Any) -> list[str]:
    """The variants a benchmark scores: its own `variants`, else the steering variants."""
    from traitflow.stages.which_vector import steering_variants

    return list(spec.variants) or steering_variants(exp)


def benchmark_keys(exp: Experiment) -> list[str]:
    """Every `<benchmark>/<variant>` partition of the experiment."""
    return [f"{spec.name}/{v}" for spec in exp.spec.benchmarks for v in benchmark_variants(exp, spec)]


def _memory_budget() -> float | None:
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise TraitflowError(f"{MEMORY_BUDGET_ENV} must be a positive number of MB, got {text!r}")
    return value


def _require_some(loaded: list, source: str, what: str) -> None:
    if not loaded:
        raise TraitflowError(f"benchmark source {source}: no {what} in it")


def run_benchmark(ctx: StageContext, benchmark: str) -> StageOutput:
    from traitflow.capability.conditions import resolve_conditions
    from traitflow.capability.items import as_chat, load_items, load_texts
    from traitflow.capability.score import paired_delta, score_ce, score_choices, summarize

    exp = ctx.experiment
    name, _, variant = benchmark.partition("/")
    spec = next(b for b in exp.spec.benchmarks if b.name == name)
    root, budget, batch_size = ctx.project.root, _memory_budget(), exp.spec.inference.batch_size
    loaded = ctx.load_model(variant)
    conditions = resolve_conditions(ctx, list(spec.conditions), positions="all" if name == "ce_loss" else "response",
                                    n_layers=loaded.n_layers)
    results: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    if name == "ce_loss":
        texts = load_texts(spec.source, spec.limit, root)
        _require_some(texts, spec.source, "paragraphs of 20+ words")
        # KL is against the unsteered model: it goes first (once), whether or not `baseline` is a condition.
        steered = [c for c in conditions if c.config]
        scored = score_ce(loaded, texts, [(), *(c.config for c in steered)], batch_size=batch_size, memory_budget_mb=budget,
                          log=ctx.log)
        by_name = {"baseline": scored[0], **{c.name: row for c, row in zip(steered, scored[1:], strict=True)}}
        for condition in conditions:
            row = by_name[condition.name]
            results[condition.name] = {"accuracy": None, "ci95": None, "delta": None, "delta_ci95": None, "n": len(texts),
                                       "ce": row["ce"], "kl": row["kl"], "tokens": row["tokens"], "detail": condition.detail}
        n = len(texts)
    else:
        items = load_items(name, spec.source, spec.limit, root)
        _require_some(items, spec.source, "items")
        if spec.chat_template:
            items = as_chat(loaded, items)
        scored = score_choices(loaded, items, [c.config for c in conditions], batch_size=batch_size,
                               memory_budget_mb=budget, log=ctx.log)
        correct = {c.name: [r["correct"] for r in rows] for c, rows in zip(conditions, scored, strict=True)}
        for condition, rows in zip(conditions, scored, strict=True):
            summary = summarize(rows)
            # The tax: the accuracy change from the unsteered model on the same items, paired.
            delta = (paired_delta(correct["baseline"], correct[condition.name])
                     if condition.config and "baseline" in correct else {"delta": None, "ci95": None})
            results[condition.name] = {**summary, "delta": delta["delta"], "delta_ci95": delta["ci95"], "ce": None, "kl": None,
                                       "tokens": None, "detail": condition.detail}
        for i, item in enumerate(items):
            predictions.append({"id": item.id, "label": item.label, "context": item.question or item.context,
                                "choices": list(item.choices),
                                "pred": {c.name: scored[k][i]["pred"] for k, c in enumerate(conditions)},
                                "logprobs": {c.name: [round(x, 5) for x in scored[k][i]["logprobs"]]
                                             for k, c in enumerate(conditions)}})
        n = len(items)
    record = {"benchmark": name, "variant": variant, "source": spec.source, "chat_template": spec.chat_template, "n": n,
              "conditions": results, "predictions": predictions}
    path = ctx.artifacts.write(Benchmark, record, benchmark)
    from traitflow.charts import capability_chart

    chart = capability_chart(record)
    files = chart.write(path.parent, ctx.store)
    return StageOutput(path, _numbers(record), files={"chart_html": files["html"]}, chart=Markdown(chart.markdown(benchmark)),
                       tables={"conditions": _table(record)}, samples=_samples(record))


def _numbers(record: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"n": record["n"]}
    for condition, row in record["conditions"].items():
        if row["accuracy"] is not None:
            out[f"accuracy {condition}"] = row["accuracy"]
        if row.get("delta") is not None:
            out[f"delta {condition}"] = row["delta"]
        if row["ce"] is not None:
            out[f"ce {condition}"] = row["ce"]
            out[f"kl {condition}"] = row["kl"]
    return out


def _table(record: dict) -> Table:
    columns = {"condition": "string", "accuracy": "float", "ci95_low": "float", "ci95_high": "float",
               "delta": "float", "delta_ci95_low": "float", "delta_ci95_high": "float", "n": "int", "ce": "float", "kl": "float"}
    rows = [{"condition": name, "accuracy": row["accuracy"], "ci95_low": (row["ci95"] or [None, None])[0],
             "ci95_high": (row["ci95"] or [None, None])[1], "delta": row.get("delta"),
             "delta_ci95_low": (row.get("delta_ci95") or [None, None])[0], "delta_ci95_high": (row.get("delta_ci95") or [None, None])[1],
             "n": row["n"], "ce": row["ce"], "kl": row["kl"]}
            for name, row in record["conditions"].items()]
    return Table(columns, rows)


def _samples(record: dict, n: int = 3) -> Markdown | None:
    """A few items whose prediction a condition changed: what a condition costs, in text."""
    names = list(record["conditions"])
    if not record["predictions"] or len(names) < 2:
        return None
    changed = [p for p in record["predictions"] if len(set(p["pred"].values())) > 1][:n]
    if not changed:
        return Markdown("No condition changed any item's prediction.")
    rows = [[p["context"], p["choices"][p["label"]], *(p["choices"][p["pred"][c]] for c in names)] for p in changed]
    return markdown_table("items a condition changed", ["item", "right answer", *(f"picked: {c}" for c in names)], rows)
