"""The comparison stage: variant_diff (one per comparison `<a>_vs_<b>/<prompt set>`)."""

from typing import Any

from traitflow.artifacts import VariantDiff, responses_artifact
from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment
from traitflow.stages.context import Markdown, StageContext, StageOutput, markdown_table
from traitflow.stages.which_vector import comparison_vector, has_vectors, load_vectors, vectors_context

__all__ = ["comparison_key", "comparison_keys", "run_variant_diff"]


def comparison_key(a: str, b: str, prompt_set: str) -> str:
    return f"{a}_vs_{b}/{prompt_set}"


def comparison_keys(exp: Experiment) -> list[str]:
    return [comparison_key(c.a, c.b, c.prompt_set) for c in exp.spec.comparisons]


def run_variant_diff(ctx: StageContext, comparison: str) -> StageOutput:
    """Replay A's responses through A and B; per trait and layer, how far B moves along the trait."""
    from traitflow.compare.diff import Probe, compare_variants

    exp = ctx.experiment
    spec = next(c for c in exp.spec.comparisons if comparison_key(c.a, c.b, c.prompt_set) == comparison)
    responses = ctx.artifacts.read(responses_artifact(exp.spec.inference.replay, spec.a), spec.prompt_set, spec.a)
    probes = []
    src = vectors_context(ctx, "inference")
    for trait in exp.traits:
        if trait in ctx.blocked_traits or not has_vectors(src, trait):
            continue
        position, component, method = comparison_vector(ctx, trait)
        vectors = load_vectors(src, trait, src.experiment.extraction_variant)
        layers = vectors.defined_layers(position, component, method)
        stacked = vectors.vectors[(position, component, method)]
        probes.append(Probe(trait, layers, stacked[[vectors.layers.index(layer) for layer in layers]]))
    if not probes:
        raise TraitflowError(f"{exp.name}: no trait has extracted vectors yet; materialize extraction_eval first")
    record = compare_variants(ctx.load_model(spec.a), ctx.load_model(spec.b), responses, probes, exp.spec.inference.batch_size,
                              top_pct=spec.top_pct)
    record["vectors"] = {p.trait: dict(zip(("position", "component", "method"), comparison_vector(ctx, p.trait), strict=True))
                         for p in probes}
    path = ctx.artifacts.write(VariantDiff, record, comparison)
    from traitflow.charts import comparison_charts

    chart = comparison_charts(record)
    files = chart.write(path.parent, ctx.store)
    numbers: dict[str, Any] = {"n_prompts": record["n_prompts"]}
    for trait, info in record["traits"].items():
        numbers[f"{trait} peak d (L{info['peak']['layer']})"] = info["peak"]["cohens_d"]
    return StageOutput(path, numbers, files={"chart_html": files["html"]}, chart=Markdown(chart.markdown(comparison)),
                       samples=clause_samples(record))


def clause_samples(record: dict, n: int = 5) -> Markdown:
    """The `n` clauses of A's replies that B moves most along any trait (|B − A| at the trait's
    peak layer), with the trait and the prompt they come from."""
    clauses = [{"trait": trait, **c} for trait, info in record["traits"].items() for c in info["top_clauses"]]
    clauses.sort(key=lambda c: -abs(c["delta"]))
    return markdown_table(f"clauses {record['b']} moves most on {record['a']}'s tokens (delta B − A)",
                          ["trait", "prompt", "clause", "delta"],
                          [[c["trait"], c["id"], c["clause"], c["delta"]] for c in clauses[:n]])
