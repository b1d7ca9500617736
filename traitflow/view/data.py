"""Each viewer page's data, read from an experiment's stored artifacts (any store, no model).

Every function takes a :class:`~traitflow.stages.context.ReadContext` and returns plain JSON-able
dicts: the viewer embeds them in its pages, the static report embeds all of them in one file, and
the `summary` asset's table is :func:`experiment_rows`. Whatever is not materialized yet is left
out (or None) and said so, never invented.
"""

import json
import math
from typing import Any

from traitflow.artifacts import (
    BENCHMARK_CONDITION_FIELDS,
    Benchmark,
    BestVector,
    Calibration,
    ExtractionEval,
    LogitLens,
    Projections,
    Responses,
    Steering,
    VariantDiff,
    Vetting,
    responses_artifact,
)
from traitflow.errors import TraitflowError
from traitflow.stages.comparison import comparison_key
from traitflow.stages.context import ReadContext
from traitflow.stages.which_vector import steering_variants, vectors_context
from traitflow.view.urls import page_path

__all__ = ["benchmarks_page", "chat_page", "comparison_page", "dynamics_page", "experiment_page", "experiment_rows", "extraction_page",
           "steering_page"]

MASSIVE_NORM_RATIO = 3.0  # a token whose ‖h‖ is this many times its response's median is a massive activation


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined number is None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _eval_row(evaluation: dict | None, position: str, component: str, method: str, layer: int) -> dict | None:
    for row in (evaluation or {}).get("scores", []):
        if (row["position"], row["component"], row["method"], row["layer"]) == (position, component, method, layer):
            return row
    return None


# --------------------------------------------------------------------------- Experiment
def experiment_rows(ctx: ReadContext) -> list[dict[str, Any]]:
    """One row per trait (:func:`trait_row`): the cross-trait table of the Experiment page and of
    the `summary` asset."""
    return [trait_row(ctx, trait) for trait in ctx.experiment.traits]


def trait_row(ctx: ReadContext, trait: str) -> dict[str, Any]:
    """A trait's best vector (position, method, layer), held-out accuracy and Cohen's d of that
    vector, the steering delta and coherence it reached, and the rule that chose it.

    The vector is `best_vector`'s when materialized; before steering, the extraction's best at the
    first position (rule ``held-out accuracy (not steered yet)``)."""
    exp = ctx.experiment
    src = ctx if exp.extracts else vectors_context(ctx, "steering")
    evaluation = src.artifacts.read_optional(ExtractionEval, trait, src.experiment.extraction_variant)
    best = ctx.artifacts.read_optional(BestVector, trait)
    row: dict[str, Any] = {"trait": trait, "position": None, "component": None, "method": None, "layer": None,
                           "val_accuracy": None, "cohens_d": None, "steering_variant": None, "coefficient": None,
                           "delta": None, "coherence": None, "rule": None, "refined_from": None}
    if best is not None:
        row.update(position=best["position"], component=best["component"], method=best["method"], layer=best["layer"],
                   steering_variant=best.get("variant"), coefficient=best.get("coefficient"), delta=best.get("delta"),
                   coherence=best.get("coherence_mean"), rule=best["rule"])
        if best["method"] == "cma_es" and best.get("variant"):
            # A CMA-ES refinement has no held-out score of its own; say which vector it refined.
            summary = ctx.artifacts.read_optional(Steering, trait, best["variant"])
            row["refined_from"] = ((summary or {}).get("best") or {}).get("method")
        scored = _eval_row(evaluation, best["position"], best["component"], best["method"], best["layer"])
        if scored is not None:
            row.update(val_accuracy=scored["val_accuracy"], cohens_d=scored.get("cohens_d"))
    elif evaluation is not None:
        position = src.experiment.extraction_for(trait).positions[0]
        top = evaluation["best"].get(position) or next(iter(evaluation["best"].values()))
        row.update(position=top["position"], component=top["component"], method=top["method"], layer=top["layer"],
                   val_accuracy=top["val_accuracy"], cohens_d=top.get("cohens_d"), rule="held-out accuracy (not steered yet)")
    row["links"] = {"extraction": page_path(exp.name, "extraction", trait=trait),
                    **{f"steering:{v}": page_path(exp.name, "steering", trait=trait, variant=v)
                       for v in steering_variants(exp) if ctx.artifacts.exists(Steering, trait, v)}}
    return {k: _finite(v) for k, v in row.items()}


def experiment_page(ctx: ReadContext) -> dict[str, Any]:
    exp = ctx.experiment
    dynamics = [{"prompt_set": ps, "variant": v, "link": page_path(exp.name, "dynamics", prompt_set=ps, variant=v)}
                for ps in exp.spec.inference.prompt_sets for v in exp.inference_variants if ctx.artifacts.exists(Projections, ps, v)]
    comparisons = [{"a": c.a, "b": c.b, "prompt_set": c.prompt_set,
                    "link": page_path(exp.name, "comparison", a=c.a, b=c.b, prompt_set=c.prompt_set)}
                   for c in exp.spec.comparisons if ctx.artifacts.exists(VariantDiff, comparison_key(c.a, c.b, c.prompt_set))]
    from traitflow.stages.capability import benchmark_keys

    benchmarks = [{"benchmark": key.partition("/")[0], "variant": key.partition("/")[2],
                   "link": page_path(exp.name, "benchmarks", benchmark=key.partition("/")[0], variant=key.partition("/")[2])}
                  for key in benchmark_keys(exp) if ctx.artifacts.exists(Benchmark, key)]
    return {"page": "experiment", "experiment": exp.name, "storage": ctx.store.uri, "traits": experiment_rows(ctx),
            "dynamics": dynamics, "comparisons": comparisons, "benchmarks": benchmarks,
            "chat": page_path(exp.name, "chat")}


# --------------------------------------------------------------------------- Extraction
def extraction_page(ctx: ReadContext, trait: str) -> dict[str, Any]:
    """Method × layer scores at every position, the best per position, the chosen vector, vetting
    samples (passed and failed, with their text and score) and the logit lens of the best vectors."""
    exp = ctx.experiment
    _require_trait(ctx, trait)
    src = ctx if exp.extracts else vectors_context(ctx, "steering")
    variant = src.experiment.extraction_variant
    evaluation = src.artifacts.read_optional(ExtractionEval, trait, variant)
    scores = [{k: _finite(row.get(k)) for k in ("position", "component", "method", "layer", "val_accuracy", "auroc",
                                                "cohens_d", "polarity", "combined")}
              for row in (evaluation or {}).get("scores", [])]
    responses = src.artifacts.read_optional(Responses, trait, variant)
    vetting = src.artifacts.read_optional(Vetting, trait, variant)
    texts = {(it["side"], it["index"]): it for it in (responses or {}).get("items", [])}
    samples = []
    for item in (vetting or {}).get("items", []):
        said = texts.get((item["side"], item["index"]), {})
        samples.append({"side": item["side"], "index": item["index"], "score": _finite(item.get("score")),
                        "passed": item.get("passed"), "prompt": said.get("prompt"), "response": said.get("response")})
    if vetting is None and responses is not None:  # vetting off: every reply is used
        samples = [{"side": it["side"], "index": it["index"], "score": None, "passed": None, "prompt": it.get("prompt"),
                    "response": it.get("response")} for it in responses["items"]]
    lens = src.artifacts.read_optional(LogitLens, trait, variant)
    lenses = [{"position": entry["position"], "method": entry["method"],
               "layers": [{"layer": la["layer"], "top": [t for t, _ in la["top"][:10]],
                           "bottom": [t for t, _ in la.get("bottom", [])[:10]]} for la in entry["layers"]]}
              for entry in (lens or {}).get("lenses", [])]
    chosen = trait_row(ctx, trait)
    return {"page": "extraction", "experiment": exp.name, "trait": trait, "variant": variant,
            "definition": _definition(ctx, trait), "scores": scores,
            "best": {p: {k: _finite(v) for k, v in row.items()} for p, row in (evaluation or {}).get("best", {}).items()},
            "chosen": chosen, "vetting": {"summary": (vetting or {}).get("summary"),
                                          "thresholds": (vetting or {}).get("thresholds"), "samples": samples},
            "lens": lenses,
            "steering": {v: page_path(exp.name, "steering", trait=trait, variant=v)
                         for v in steering_variants(exp) if ctx.artifacts.exists(Steering, trait, v)}}


def _definition(ctx: ReadContext, trait: str) -> str | None:
    dataset = ctx.project.traits.get(trait)
    return getattr(dataset, "definition", None) if dataset is not None else None


def _require(value: str | None, known: list[str], what: str, experiment: str) -> None:
    """A page asked for something the experiment does not have: one line saying what it has."""
    if value not in known:
        raise TraitflowError(f"experiment {experiment} has no {what} {value!r} (it has {', '.join(known) or 'none'})")


def _require_trait(ctx: ReadContext, trait: str | None) -> None:
    if trait not in ctx.experiment.traits:
        raise TraitflowError(f"experiment {ctx.experiment.name} has no trait {trait!r}")


# --------------------------------------------------------------------------- Steering sweep
def steering_page(ctx: ReadContext, trait: str, variant: str) -> dict[str, Any]:
    """The search's runs (layer × coefficient, trait and coherence) and every run's answers, with the
    baseline's answer to the same question, for the response browser."""
    exp = ctx.experiment
    _require_trait(ctx, trait)
    _require(variant, steering_variants(exp), "steered variant", exp.name)
    store, folder = ctx.store, Steering.folder(ctx.store, exp.name, trait, variant)
    summary = ctx.artifacts.read_optional(Steering, trait, variant)
    log = store.read_text_optional(Steering.results_log(store, exp.name, trait, variant)) or ""
    runs, baseline, header = [], None, None
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a torn last line of a killed run
            continue
        kind = entry.get("type")
        if kind == "header":
            header = entry
        elif kind == "baseline":
            baseline = entry["result"]
        elif "config" in entry:
            vector = entry["config"]["vectors"][0]
            name = Steering.run_name(vector["layer"], vector["multiplier"])
            runs.append({"run": name, "layer": vector["layer"], "multiplier": vector["multiplier"],
                         "coefficient": vector.get("weight"), "method": vector.get("method"),
                         **{k: _finite(entry["result"].get(k)) for k in ("trait_mean", "coherence_mean", "n")}})
    # A run counts when coherent enough: the finished search's threshold, else the spec's (search running).
    min_coherence = (summary or {}).get("min_coherence", exp.spec.steering.search.min_coherence)
    for run in runs:
        run["valid"] = min_coherence is not None and (run["coherence_mean"] or 0) >= min_coherence
    answers: dict[str, list[dict]] = {}
    for name in ["baseline", *(r["run"] for r in runs)]:
        text = store.read_text_optional(folder / "responses" / f"{name}.json")
        if text is not None:
            answers[name] = [{k: _finite(a.get(k)) for k in ("question", "answer", "trait", "coherence")} for a in json.loads(text)]
    best = (summary or {}).get("best")
    return {"page": "steering", "experiment": exp.name, "trait": trait, "variant": variant,
            "finished": summary is not None, "min_coherence": min_coherence,
            "baseline": {k: _finite(v) for k, v in (baseline or (summary or {}).get("baseline") or {}).items()},
            "best_run": Steering.run_name(best["layer"], best["multiplier"]) if best else None,
            "direction": (header or {}).get("direction"), "runs": runs, "answers": answers,
            "variants": [v for v in steering_variants(exp) if ctx.artifacts.exists(Steering, trait, v)],
            "extraction": page_path(exp.name, "extraction", trait=trait)}


# --------------------------------------------------------------------------- Trait dynamics
def dynamics_page(ctx: ReadContext, prompt_set: str, variant: str, prompt: str | None = None,
                  all_items: bool = False) -> dict[str, Any]:
    """A prompt set's responses (one variant), and for the chosen prompt (or every prompt with
    `all_items`) each token's score for every trait at every monitored layer, and ‖h‖.

    Tokens whose ‖h‖ is ``MASSIVE_NORM_RATIO`` × the response's median or more at a layer are
    listed as massive activations (attention sinks and the like: their huge norm swamps a raw
    projection); the page can leave them out of its colour scale. The calibration's massive
    dimensions per layer come along for reference."""
    exp = ctx.experiment
    _require(prompt_set, list(exp.spec.inference.prompt_sets), "prompt set", exp.name)
    _require(variant, exp.inference_variants, "inference variant", exp.name)
    record = ctx.artifacts.read_optional(Projections, prompt_set, variant)
    responses = ctx.artifacts.read_optional(responses_artifact(exp.spec.inference.replay, variant), prompt_set, variant)
    prompts = {str(it["id"]): it.get("prompt") for it in (responses or {}).get("items", [])}
    items = (record or {}).get("items", [])
    listing = [{"id": str(it["id"]), "prompt": prompts.get(str(it["id"])), "response": it.get("response")} for it in items]
    chosen = items if all_items else [it for it in items if str(it["id"]) == str(prompt)] or items[:1]
    calibration = ctx.artifacts.read_optional(Calibration, variant)
    layers = [int(x) for x in (record or {}).get("layers", [])]
    massive_dims = {str(m["layer"]): [d["dim"] for d in m.get("dims", [])]
                    for m in (calibration or {}).get("massive", []) if m["layer"] in layers}
    return {"page": "dynamics", "experiment": exp.name, "prompt_set": prompt_set, "variant": variant,
            "materialized": record is not None, "layers": layers, "mode": (record or {}).get("mode"),
            "traits": (record or {}).get("traits", {}), "skipped_traits": (record or {}).get("skipped_traits", []),
            "prompts": listing, "items": [_token_item(it, prompts) for it in chosen],
            "massive_dims": massive_dims, "massive_norm_ratio": MASSIVE_NORM_RATIO,
            "variants": [v for v in exp.inference_variants if ctx.artifacts.exists(Projections, prompt_set, v)]}


def _token_item(item: dict, prompts: dict[str, Any]) -> dict[str, Any]:
    norms = item.get("norms", {})
    massive = {}
    for layer, values in norms.items():
        ordered = sorted(values)
        median = ordered[len(ordered) // 2] if ordered else 0.0
        massive[layer] = [i for i, v in enumerate(values) if median > 0 and v >= MASSIVE_NORM_RATIO * median]
    return {"id": str(item["id"]), "prompt": prompts.get(str(item["id"])), "prompt_len": item.get("prompt_len", 0),
            "tokens": item["tokens"], "response": item.get("response"), "scores": item["scores"], "norms": norms,
            "massive_tokens": massive}


# --------------------------------------------------------------------------- Model comparison
def comparison_page(ctx: ReadContext, a: str, b: str, prompt_set: str, trait: str | None = None,
                    all_traits: bool = False) -> dict[str, Any]:
    """Effect size per trait and layer; per prompt, A's reply with each token's delta (B − A on A's
    tokens, at the trait's peak layer) and B's own reply to the same prompt; the top clauses.

    Token deltas and clauses come for one trait (`trait`, else the one B moved most), or for every
    trait with `all_traits` (the static report): with hundreds of traits they are megabytes."""
    exp = ctx.experiment
    _require(comparison_key(a, b, prompt_set), [comparison_key(c.a, c.b, c.prompt_set) for c in exp.spec.comparisons],
             "comparison", exp.name)
    record = ctx.artifacts.read_optional(VariantDiff, comparison_key(a, b, prompt_set))
    page: dict[str, Any] = {"page": "comparison", "experiment": exp.name, "a": a, "b": b, "prompt_set": prompt_set}
    if record is None:
        return {**page, "materialized": False, "effects": [], "traits": {}, "details": {}, "texts": {}}
    effects = [{"trait": name, **{k: _finite(row.get(k)) for k in ("layer", "cohens_d", "cohens_d_paired", "cosine", "delta")}}
               for name, info in record["traits"].items() for row in info["layers"]]
    peaks = {name: {k: _finite(v) for k, v in info["peak"].items()} for name, info in record["traits"].items()}
    if trait is not None and trait not in peaks:
        raise TraitflowError(f"comparison {a} → {b} on {prompt_set} has no trait {trait!r}")
    chosen = trait or max(peaks, key=lambda t: abs(peaks[t].get("cohens_d") or 0.0), default=None)
    details = {name: {"top_clauses": info["top_clauses"][:50],
                      # every prompt's token deltas (newer artifacts), else the five that moved most
                      "prompts": info.get("prompts", info.get("top_prompts", []))}
               for name, info in record["traits"].items() if all_traits or name == chosen}
    texts: dict[str, dict[str, str | None]] = {}
    for side, variant in (("a", a), ("b", b)):
        responses = ctx.artifacts.read_optional(responses_artifact(exp.spec.inference.replay, variant), prompt_set, variant)
        for item in (responses or {}).get("items", []):
            entry = texts.setdefault(str(item["id"]), {"prompt": item.get("prompt"), "a": None, "b": None})
            entry[side] = item.get("response")
    return {**page, "materialized": True, "n_prompts": record["n_prompts"], "sign": record["sign"], "effects": effects,
            "traits": peaks, "trait": chosen, "details": details, "texts": texts}


# --------------------------------------------------------------------------- Benchmarks
def benchmarks_page(ctx: ReadContext, benchmark: str | None = None, variant: str | None = None,
                    all_items: bool = False) -> dict[str, Any]:
    """Every stored benchmark × variant with its conditions' accuracy (± 95 % interval) or CE and KL,
    and, for the chosen one (or every one with `all_items`), each item: the question, the right
    answer and what each condition picked."""
    from traitflow.stages.capability import benchmark_keys

    exp = ctx.experiment
    keys = benchmark_keys(exp)
    wanted = f"{benchmark}/{variant}" if benchmark or variant else None
    if wanted is not None and wanted not in keys:
        raise TraitflowError(f"experiment {exp.name} has no benchmark {wanted!r} (it has {', '.join(keys) or 'none'})")
    runs, records = [], {}
    for key in keys:
        record = ctx.artifacts.read_optional(Benchmark, key)
        if record is None:
            continue
        records[key] = record
        name, _, var = key.partition("/")
        runs.append({"key": key, "benchmark": name, "variant": var, "n": record["n"], "source": record["source"],
                     "kind": "ce" if name == "ce_loss" else "choice", "chat_template": record["chat_template"],
                     "conditions": [{"condition": c, **{k: _finite(row.get(k)) for k in BENCHMARK_CONDITION_FIELDS}}
                                    for c, row in record["conditions"].items()]})
    # Item browsers are for multiple choice (ce_loss scores paragraphs, it has no items to pick).
    choice = [r["key"] for r in runs if r["kind"] == "choice"]
    chosen = wanted if wanted in choice else (choice[0] if choice else None)
    items = {key: records[key]["predictions"] for key in choice if all_items or key == chosen}
    return {"page": "benchmarks", "experiment": exp.name, "runs": runs, "items": items, "chosen": chosen}


# --------------------------------------------------------------------------- Live chat
def chat_page(ctx: ReadContext, served: dict[str, str] | None) -> dict[str, Any]:
    """What Live chat can steer and watch: every trait with a best vector (its coefficient sets the
    slider's scale), the variants the running model server holds (None: no server)."""
    rows = experiment_rows(ctx)
    traits = [{"trait": r["trait"], "layer": r["layer"], "method": r["method"],
               "coefficient": r["coefficient"], "ready": r["layer"] is not None} for r in rows]
    variants = [v for v in ctx.experiment.variants if served is not None and v in served]
    return {"page": "chat", "experiment": ctx.experiment.name, "traits": traits, "variants": variants,
            "server": served is not None}
