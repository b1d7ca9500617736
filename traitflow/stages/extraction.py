"""Extraction stages (trait × the extraction variant): responses → vetting → activations → vectors →
extraction_eval → logit_lens."""

from pathlib import Path
from typing import Any

from traitflow.artifacts import Activations, ExtractionEval, LogitLens, Responses, Vectors, Vetting
from traitflow.errors import TraitflowError
from traitflow.stages.context import Check, Markdown, ReadContext, StageContext, StageOutput, Table, markdown_table
from traitflow.stages.which_vector import load_vectors

__all__ = ["StageContext", "judge_cache_path", "judge_for", "run_activations", "run_extraction_eval", "run_logit_lens",
           "run_responses", "run_vectors", "run_vetting", "vetting_passed"]


def run_responses(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.extract.responses import generate_trait_responses

    spec = ctx.experiment.spec.extraction
    dataset = ctx.project.traits[trait]
    loaded = ctx.load_model(variant)
    record = generate_trait_responses(loaded, dataset, spec.max_new_tokens, spec.batch_size)
    record["input_hashes"] = {"trait": dataset.content_hash()}
    path = ctx.artifacts.write(Responses, record, trait, variant)
    lengths = [len(it["response_ids"]) for it in record["items"]]
    return StageOutput(path, {"n_positive": len(dataset.positive), "n_negative": len(dataset.negative),
                              "mean_response_tokens": sum(lengths) / max(1, len(lengths))})


def judge_cache_path(ctx: ReadContext) -> Path:
    """One SQLite judge cache per project: keyed by judge model, template and inputs, so experiments share it."""
    return ctx.project.root / ".traitflow" / "judge_cache.sqlite"


def judge_for(ctx: StageContext, trait: str):
    """The trait's judge: its trait.yaml `judge:` when set, else the experiment's."""
    from traitflow.judge import judge_spec_for, make_judge

    spec = judge_spec_for(ctx.experiment.spec, ctx.project.traits[trait])
    return make_judge(spec, judge_cache_path(ctx), load_variant=ctx.load_model)


def run_vetting(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.extract.vetting import vet_responses

    spec = ctx.experiment.spec.extraction.vetting
    responses = ctx.artifacts.read(Responses, trait, variant)
    judge = judge_for(ctx, trait) if spec.enabled else None
    record = vet_responses(responses, ctx.project.traits[trait], spec, judge, ctx.experiment.extraction_for(trait).positions)
    path = ctx.artifacts.write(Vetting, record, trait, variant)
    summary = record["summary"]
    ok = summary["passed_positive"] >= spec.min_per_side and summary["passed_negative"] >= spec.min_per_side
    return StageOutput(
        path, {k: v for k, v in summary.items() if v is not None}, samples=vetting_samples(responses, record),
        checks={"min_per_side": Check(
            ok or not spec.enabled,
            f"{trait}: {summary['passed_positive']} positive and {summary['passed_negative']} negative replies passed "
            f"(need {spec.min_per_side} each; {summary['none']} unscored)")},
    )


def vetting_samples(responses: dict, vetting: dict, n: int = 2) -> Markdown:
    """The first `n` replies that passed vetting and the first `n` that failed, with their judge
    scores: enough to see at a glance whether the judge reads the pole the way a person would."""
    texts = {(it["side"], it["index"]): it for it in responses["items"]}
    passed = [v for v in vetting["items"] if v["passed"]][:n]
    failed = [v for v in vetting["items"] if not v["passed"]][:n]
    rows = [["passed" if v["passed"] else "failed", v["side"], v.get("score"), texts.get((v["side"], v["index"]), {}).get("prompt"),
             texts.get((v["side"], v["index"]), {}).get("response")] for v in passed + failed]
    return markdown_table(f"{len(passed)} passed and {len(failed)} failed replies", ["vetting", "side", "score", "prompt", "reply"], rows)


def vetting_passed(ctx: ReadContext, trait: str, variant: str) -> bool:
    """Whether a trait has enough vetted replies on both sides to extract from (needs no model)."""
    spec = ctx.experiment.spec.extraction.vetting
    summary = ctx.artifacts.read(Vetting, trait, variant)["summary"]
    return not spec.enabled or min(summary["passed_positive"], summary["passed_negative"]) >= spec.min_per_side


def run_activations(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.extract.capture import capture_trait_activations
    from traitflow.extract.layers import parse_layers

    spec = ctx.experiment.extraction_for(trait)
    responses = ctx.artifacts.read(Responses, trait, variant)
    vetting = ctx.artifacts.read(Vetting, trait, variant)
    if not vetting_passed(ctx, trait, variant):
        s = vetting["summary"]
        raise TraitflowError(f"{trait} ({variant}): vetting left {s['passed_positive']} positive / {s['passed_negative']} "
                             f"negative replies, fewer than min_per_side={spec.vetting.min_per_side}; nothing extracted")
    keep = {(v["side"], v["index"]) for v in vetting["items"] if v["passed"]}
    responses = {**responses, "items": [it for it in responses["items"] if (it["side"], it["index"]) in keep]}
    # Positions as written in the spec are the keys; adaptive vetting may narrow a response window.
    windows = {p: vetting.get("adaptive_positions", {}).get(p, p) for p in spec.positions}
    loaded = ctx.load_model(variant)
    layers = parse_layers(spec.layers, loaded.n_layers)
    acts = capture_trait_activations(loaded, responses, layers, windows, spec.component, spec.batch_size)
    if int(acts.labels.sum()) == 0 or int((acts.labels == 0).sum()) == 0:
        raise TraitflowError(f"{trait} ({variant}): no usable responses on one side; cannot extract a vector")
    # Stored with the tensors' metadata (ActivationSet.to_tensors): what they were computed from.
    acts.metadata["input_hashes"] = responses.get("input_hashes", {})
    acts.metadata["vetting"] = {"enabled": vetting["enabled"], "judge": vetting.get("judge"), "kept": len(responses["items"])}
    path = ctx.artifacts.write(Activations, acts, trait, variant)
    return StageOutput(path, {"n": len(acts.labels), "layers": len(layers), "dropped_empty": acts.metadata["dropped_empty"]})


def run_vectors(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.extract.vectors import extract_vectors

    spec = ctx.experiment.extraction_for(trait)
    acts = ctx.artifacts.read(Activations, trait, variant)
    vectors = extract_vectors(acts, list(spec.methods), spec.val_split, spec.seed, acts.metadata.get("input_hashes", {}),
                              clean_massive=spec.clean_massive_dims)
    path = ctx.artifacts.write(Vectors, vectors, trait, variant)
    return StageOutput(path, {"n_vectors": len(vectors.vectors) * len(vectors.layers),
                              "n_train": vectors.metadata["n_train"], "n_val": vectors.metadata["n_val"]})


# extraction_eval's `scores` table in Dagster: every method × layer row the evaluation has, all positions.
SCORE_COLUMNS = {"position": "string", "component": "string", "method": "string", "layer": "int", "val_accuracy": "float",
                 "auroc": "float", "cohens_d": "float"}


def run_extraction_eval(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.charts import eval_heatmap
    from traitflow.extract.vectors import best_per_position, evaluate_vectors

    # Only the extracted vectors: a CMA-ES refinement is downstream of this asset, never read here.
    scores = evaluate_vectors(ctx.artifacts.read(Activations, trait, variant), load_vectors(ctx, trait, variant))
    if not scores:
        raise TraitflowError(f"{trait} ({variant}): no held-out split (extraction.val_split is 0); nothing to evaluate")
    best = best_per_position(scores)
    record = {
        "trait": trait,
        "variant": variant,
        "tie_break": "highest val_accuracy, then highest Cohen's d, then earliest layer, then method name",
        "best": {pos: s.as_dict() for pos, s in best.items()},
        "scores": [s.as_dict() for s in scores],
    }
    path = ctx.artifacts.write(ExtractionEval, record, trait, variant)
    chart = eval_heatmap(record["scores"], trait)
    files = chart.write(path.parent, ctx.store)
    threshold = ctx.experiment.spec.extraction.min_val_accuracy
    first = best[next(iter(best))]
    return StageOutput(
        path,
        {"best_method": first.method, "best_layer": first.layer, "best_val_accuracy": first.val_accuracy,
         "best_cohens_d": first.cohens_d},
        files={"chart_html": files["html"]},
        chart=Markdown(chart.markdown(f"{trait} ({variant})")),
        tables={"scores": Table(SCORE_COLUMNS, [{k: row[k] for k in SCORE_COLUMNS} for row in record["scores"]])},
        checks={
            "polarity": Check(all(s.polarity == 1 for s in best.values()),
                              f"{trait}: best vectors' held-out polarity " + ", ".join(f"{p} {s.polarity:+d}" for p, s in best.items())),
            "min_val_accuracy": Check(all(s.val_accuracy >= threshold for s in best.values()),
                                      f"{trait}: best held-out accuracy " + ", ".join(f"{p} {s.val_accuracy:.3f}" for p, s in best.items())
                                      + f" (threshold {threshold})"),
        },
    )


def run_logit_lens(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    """Top and bottom tokens of the best vector at each position, at every extracted layer."""
    from traitflow.lens import lens_record, logit_lens

    spec = ctx.experiment.spec.logit_lens
    vectors = load_vectors(ctx, trait, variant)
    evaluation = ctx.artifacts.read(ExtractionEval, trait, variant)
    loaded = ctx.load_model(variant)
    lenses = []
    for position, best in evaluation["best"].items():
        key = (position, best["component"], best["method"])
        if best["component"] != "residual":
            continue  # the unembedding reads the residual stream; other sites have no lens
        norms = vectors.norms.get((position, best["component"]))
        rows = logit_lens(loaded, vectors.vectors[key], vectors.layers, top_k=spec.top_k, filter_common=spec.filter_common,
                          scale=None if norms is None else norms.tolist())
        lenses.append(lens_record(rows, trait, variant, position, best["component"], best["method"]))
    path = ctx.artifacts.write(LogitLens, {"trait": trait, "variant": variant, "lenses": lenses}, trait, variant)
    numbers: dict[str, Any] = {}
    for lens in lenses:
        last = lens["layers"][-1]
        numbers[f"top tokens {lens['position']} L{last['layer']}"] = " ".join(t for t, _ in last["top"][:8])
    return StageOutput(path, numbers)
