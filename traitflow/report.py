"""`traitflow report`: per trait the best vector and what is materialized, from stored artifacts."""

from typing import Any

from traitflow.artifacts import (
    BENCHMARK_CONDITION_FIELDS,
    Activations,
    Benchmark,
    BestVector,
    ExtractionEval,
    LogitLens,
    Projections,
    Responses,
    Steering,
    VariantDiff,
    Vectors,
    Vetting,
    responses_artifact,
)
from traitflow.specs.loader import Project
from traitflow.stages.capability import benchmark_keys
from traitflow.stages.comparison import comparison_key
from traitflow.stages.context import ReadContext
from traitflow.stages.which_vector import steering_variants, vectors_context

EXTRACTION = (Responses, Vetting, Activations, Vectors, ExtractionEval, LogitLens)


def build_report(project: Project, experiment: str, storage_uri: str | None = None) -> dict[str, Any]:
    # Read-only: stored artifacts and specs, no model.
    ctx = ReadContext.create(project, experiment, storage_uri=storage_uri)
    exp, arts = ctx.experiment, ctx.artifacts
    variant = exp.extraction_variant
    traits: dict[str, Any] = {}
    for trait in exp.traits:
        materialized = [a.asset for a in EXTRACTION if arts.exists(a, trait, variant)]
        extraction = None
        # An experiment that takes its vectors from another (`vectors_from`) reports that one's.
        src = ctx if exp.extracts else vectors_context(ctx, "steering")
        evaluation = src.artifacts.read_optional(ExtractionEval, trait, src.experiment.extraction_variant)
        if evaluation is not None:
            # The report's headline is the best vector at the first extraction position.
            position = src.experiment.extraction_for(trait).positions[0]
            best = evaluation["best"].get(position) or next(iter(evaluation["best"].values()))
            extraction = {"position": best["position"], "component": best["component"], "method": best["method"],
                          "layer": best["layer"], "val_accuracy": best["val_accuracy"], "cohens_d": best["cohens_d"],
                          "variant": src.experiment.extraction_variant, "experiment": src.experiment.name,
                          **_reasons(best, ("cohens_d",))}
        steering = None
        best = arts.read_optional(BestVector, trait)
        if best is not None:
            materialized.append("best_vector")
            if best.get("delta") is not None:
                steering = {k: best[k] for k in ("variant", "layer", "method", "coefficient", "baseline", "trait_mean",
                                                 "coherence_mean", "delta")}
        for steered in steering_variants(exp):
            if arts.exists(Steering, trait, steered) and "steering" not in materialized:
                materialized.insert(len(materialized) - ("best_vector" in materialized), "steering")
        dataset = project.traits[trait]
        prefix = dataset.steering.adversarial_prefix if dataset.steering else None
        traits[trait] = {"extraction": extraction, "steering": steering, "materialized": materialized,
                         # upstream's instruction towards the opposite pole, embedded in every steering question
                         "adversarial_prefix": {"text": prefix, "stripped": exp.spec.steering.strip_prefix} if prefix else None}
    inference: dict[str, list[str]] = {}
    for prompt_set in exp.spec.inference.prompt_sets:
        for v in exp.inference_variants:
            responses = responses_artifact(exp.spec.inference.replay, v)
            inference[f"{prompt_set}|{v}"] = [a.asset for a in (responses, Projections) if arts.exists(a, prompt_set, v)]
    comparisons: dict[str, dict] = {}
    for comparison in exp.spec.comparisons:
        record = arts.read_optional(VariantDiff, comparison_key(comparison.a, comparison.b, comparison.prompt_set))
        if record is None:
            continue
        name = f"{comparison.a}_vs_{comparison.b}"
        if len({c.prompt_set for c in exp.spec.comparisons if (c.a, c.b) == (comparison.a, comparison.b)}) > 1:
            name += f"@{comparison.prompt_set}"
        comparisons[name] = {trait: {**{k: info["peak"][k] for k in ("layer", "cohens_d", "cohens_d_paired", "cosine")},
                                     **_reasons(info["peak"], ("cohens_d", "cohens_d_paired"))}
                             for trait, info in record["traits"].items()}
    benchmarks: dict[str, dict[str, dict]] = {}
    for key in benchmark_keys(exp):
        record = arts.read_optional(Benchmark, key)
        if record is not None:
            benchmarks.setdefault(record["benchmark"], {})[record["variant"]] = {
                condition: {k: row.get(k) for k in BENCHMARK_CONDITION_FIELDS}
                for condition, row in record["conditions"].items()}
    return {"experiment": exp.name, "storage": ctx.store.uri, "traits": traits, "inference": inference,
            "comparisons": comparisons, "benchmarks": benchmarks}


def _reasons(row: dict, names: tuple[str, ...]) -> dict[str, str]:
    """The ``<name>_reason`` entries of an artifact row for these metrics (present where one is undefined, i.e. null)."""
    return {f"{n}_reason": row[f"{n}_reason"] for n in names if f"{n}_reason" in row}


def _num(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or ``n/a`` right-aligned to its width when undefined (null)."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format(value, spec) if value is not None else format("n/a", f">{width or 0}")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"experiment {report['experiment']}  (artifacts: {report['storage']})", ""]
    sources = sorted({i["extraction"]["experiment"] for i in report["traits"].values()
                      if i["extraction"] and i["extraction"].get("experiment") != report["experiment"]})
    if sources:
        lines[-1:] = [f"vectors from experiment {', '.join(sources)} (vectors_from)", ""]
    lines.append(f"{'trait':24} {'position':14} {'method':10} {'layer':>5} {'val acc':>8} {'d':>7}  materialized")
    for trait, info in report["traits"].items():
        ex = info["extraction"]
        done = ", ".join(info["materialized"]) or "nothing"
        if ex:
            lines.append(f"{trait:24} {ex['position']:14} {ex['method']:10} {ex['layer']:>5} {ex['val_accuracy']:>8.3f} "
                         f"{_num(ex['cohens_d'], '>7.2f')}  {done}")
        else:
            lines.append(f"{trait:24} {'-':14} {'-':10} {'-':>5} {'-':>8} {'-':>7}  {done}")
    steered = {t: i["steering"] for t, i in report["traits"].items() if i.get("steering")}
    if steered:
        lines.append("")
        lines.append(f"{'steering':24} {'variant':10} {'layer':>5} {'method':10} {'coef':>7} {'baseline':>8} {'steered':>8} "
                     f"{'delta':>7} {'coherence':>9}")
        for trait, st in steered.items():
            lines.append(f"{trait:24} {st['variant']:10} {st['layer']:>5} {st['method']:10} {st['coefficient']:>7.2f} "
                         f"{st['baseline']:>8.1f} {st['trait_mean']:>8.1f} {st['delta']:>+7.1f} {st['coherence_mean']:>9.1f}")
    prefixed = {t: i["adversarial_prefix"] for t, i in report["traits"].items() if i.get("adversarial_prefix")}
    if prefixed:
        lines.append("")
        for trait, prefix in prefixed.items():
            how = "stripped (steering.strip_prefix)" if prefix["stripped"] else "kept (steering.strip_prefix: false)"
            lines.append(f"{trait}: steering questions carry an adversarial prefix, {how}: {prefix['text']!r}")
    if report["inference"]:
        lines.append("")
        for key, done in report["inference"].items():
            lines.append(f"inference {key}: {', '.join(done) or 'nothing'}")
    for name, traits in report.get("comparisons", {}).items():
        lines.append("")
        lines.append(f"{name} (peak layer by |d|, d signed B - A; moved most first)")
        for trait, row in sorted(traits.items(), key=lambda kv: -abs(kv[1]["cohens_d"] or 0.0)):
            lines.append(f"  {trait:24} L{row['layer']:<3} d {_num(row['cohens_d'], '+6.2f')}  "
                         f"paired d {_num(row['cohens_d_paired'], '+6.2f')}  cosine {row['cosine']:+.2f}"
                         + (f"  (d: {row['cohens_d_reason']})" if row.get("cohens_d_reason") else ""))
    for name, variants in report.get("benchmarks", {}).items():
        for variant, conditions in variants.items():
            lines.append("")
            lines.append(f"benchmark {name} on {variant}")
            for condition, row in conditions.items():
                if name != "ce_loss":
                    low, high = row["ci95"] or (None, None)
                    tax = ""
                    if row.get("delta") is not None:
                        d_low, d_high = row["delta_ci95"]
                        tax = f"  vs baseline {row['delta']:+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
                    lines.append(f"  {condition:40} accuracy {_num(row['accuracy'], '.3f')} [{_num(low, '.3f')}, "
                                 f"{_num(high, '.3f')}]{tax}  n {row['n']}")
                else:
                    lines.append(f"  {condition:40} CE {_num(row['ce'], '.4f')}  KL {_num(row['kl'], '.4f')}  n {row['n']}")
    lines.append("")
    lines.append(f"artifacts: {report['storage']}/{report['experiment']}/<asset>/<partition>/ "
                 f"(e.g. vectors/<trait>/<variant>/{Vectors.file})")
    return "\n".join(lines)
