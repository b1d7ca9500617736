"""Steering stages: steering (trait × steered variant) → cma_es (opt-in) → best_vector (trait)."""

from typing import Any

from traitflow.artifacts import BestVector, CmaEs, ExtractionEval, Steering
from traitflow.errors import TraitflowError
from traitflow.stages.context import Check, Markdown, StageContext, StageOutput, Table, markdown_table
from traitflow.stages.extraction import judge_for
from traitflow.stages.which_vector import load_vectors, require_extraction, steering_variants, vectors_context

__all__ = ["run_best_vector", "run_cma_es", "run_steering_stage", "steering_questions",
           "steering_setup", "steering_variants"]


def steering_setup(ctx: StageContext, trait: str, variant: str, loaded: Any):
    """Which vectors steer a trait, at which layers and scales, on which questions."""
    from traitflow.extract.layers import parse_layers
    from traitflow.steer.run import SteeringSetup

    exp, spec = ctx.experiment, ctx.experiment.spec.steering
    dataset = ctx.project.traits[trait]
    if dataset.steering is None:
        raise TraitflowError(f"{dataset.folder}: steering.json is missing; the steering stage needs its questions")
    src = vectors_context(ctx, "steering")
    if src is not ctx:
        require_extraction(src, trait, "steering")
    source = src.experiment.extraction_variant
    position = spec.position or src.experiment.extraction_for(trait).positions[0]
    evaluation = src.artifacts.read(ExtractionEval, trait, source)
    if position not in evaluation["best"]:
        raise TraitflowError(f"{exp.path}: steering.position {position!r} is not among extraction.position")
    method = spec.method or evaluation["best"][position]["method"]
    component = evaluation["best"][position]["component"]
    vectors = load_vectors(src, trait, source)
    if (position, component, method) not in vectors.vectors:
        raise TraitflowError(f"{exp.path}: steering.method {method!r} was not extracted")
    defined = vectors.defined_layers(position, component, method)
    wanted_layers = exp.steering_layers_for(trait)
    layers = [layer for layer in parse_layers(wanted_layers, loaded.n_layers) if layer in defined]
    if not layers:
        raise TraitflowError(f"{exp.path}: steering.layers {wanted_layers!r} selects none of the layers where "
                             f"{method} vectors exist ({defined})")
    questions = steering_questions(dataset, spec.strip_prefix)
    stacked = vectors.vectors[(position, component, method)]
    norms = vectors.norms[(position, component)]
    return SteeringSetup(
        trait=dataset, variant=variant, questions=questions[: spec.search.questions],
        position=position, component=component, method=method, layers=layers,
        vectors={layer: stacked[vectors.layers.index(layer)] for layer in layers},
        norms={layer: float(norms[vectors.layers.index(layer)]) for layer in layers},
        direction=1 if dataset.direction == "positive" else -1,
        max_new_tokens=spec.search.max_new_tokens, batch_size=spec.search.batch_size,
        vector_source={"model": vectors.metadata.get("model", {}), "experiment": src.experiment.name, "trait": trait,
                       "variant": source},
        system_prompt=spec.system_prompt,
    )


def steering_questions(dataset: Any, strip_prefix: bool) -> list[str]:
    """The questions steered on: steering.json's as written, or without their adversarial prefix."""
    return dataset.steering.bare_questions if strip_prefix else dataset.steering.questions


def run_steering_stage(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    from traitflow.charts import steering_chart
    from traitflow.steer.run import ResultsLog, grid_keys, run_key, run_steering
    from traitflow.steer.search import Schedule

    search = ctx.experiment.spec.steering.search
    coefficients = ctx.experiment.spec.steering.coefficients
    loaded = ctx.load_model(variant)
    setup = steering_setup(ctx, trait, variant, loaded)
    schedule = Schedule(steps=search.steps, start=search.start, up=search.up, down=search.down,
                        coherence_target=search.coherence_target)
    # The engine owns the partition folder: results.jsonl, responses/, and summary.json written last.
    folder = ctx.artifacts.folder(Steering, trait, variant)
    summary = run_steering(loaded, judge_for(ctx, trait), setup, schedule, search.min_coherence, folder,
                           header_extra={"experiment": ctx.experiment.name}, log=ctx.log, coefficients=coefficients,
                           store=ctx.store)
    entries = ResultsLog(folder, ctx.store).read()
    if coefficients:  # chart the grid only, like the summary (the log may hold runs of an earlier search)
        keep = grid_keys(setup.layers, coefficients)
        entries = [e for e in entries if e.get("type") is not None or "config" not in e or run_key(e) in keep]
    chart = steering_chart(entries, trait, min_coherence=search.min_coherence, direction=setup.direction)
    files = chart.write(folder, ctx.store)
    best = summary["best"] or {}
    return StageOutput(
        ctx.artifacts.path(Steering, trait, variant),
        # n_runs, not runs: `runs` is the table of them
        {"baseline_trait": summary["baseline"]["trait_mean"], "baseline_coherence": summary["baseline"]["coherence_mean"],
         "best_delta": best.get("delta"), "best_layer": best.get("layer"), "best_coefficient": best.get("coefficient"),
         "best_coherence": best.get("coherence_mean"), "n_runs": summary["runs"]},
        files={"results_log": Steering.results_log(ctx.store, ctx.experiment.name, trait, variant), "chart_html": files["html"]},
        chart=Markdown(chart.markdown(f"{trait} steered on {variant}")),
        tables={"runs": runs_table(entries, search.min_coherence)},
        samples=steering_samples(ResultsLog(folder, ctx.store), summary),
    )


RUN_COLUMNS = {"layer": "int", "multiplier": "float", "coefficient": "float", "trait_mean": "float", "coherence_mean": "float",
               "valid": "bool"}


def runs_table(entries: list[dict], min_coherence: float) -> Table:
    """steering's `runs` table: every run of the search (the log's run lines the stage charted),
    valid when its coherence reaches `min_coherence` (the rule best_vector applies)."""
    rows = []
    for entry in entries:
        if entry.get("type") is not None or "config" not in entry:
            continue  # the header and the baseline
        vector, result = entry["config"]["vectors"][0], entry["result"]
        coherence = result.get("coherence_mean")
        rows.append({"layer": vector["layer"], "multiplier": vector["multiplier"], "coefficient": vector.get("weight"),
                     "trait_mean": result.get("trait_mean"), "coherence_mean": coherence,
                     "valid": coherence is not None and coherence >= min_coherence})
    return Table(RUN_COLUMNS, rows)


def steering_samples(log: Any, summary: dict, n: int = 3) -> Markdown:
    """The best run's answers beside the unsteered ones to the first `n` questions, each with its
    trait and coherence scores: what the numbers mean in words."""
    best = summary.get("best")
    baseline = log.read_responses("baseline") or []
    steered = (log.read_responses(Steering.run_name(best["layer"], best["multiplier"])) or []) if best else []
    by_question = {a["question"]: a for a in steered}

    def scores(answer: dict | None) -> str:
        if answer is None:
            return ""
        return f"trait {_score(answer.get('trait'))}, coherence {_score(answer.get('coherence'))}"

    rows = [[a["question"], a["answer"], scores(a), by_question.get(a["question"], {}).get("answer"),
             scores(by_question.get(a["question"]))] for a in baseline[:n]]
    if best is None:
        title = "unsteered answers (no run kept coherence)"
    else:
        title = f"unsteered vs best run (layer {best['layer']}, coefficient {best['coefficient']:.4g})"
    return markdown_table(title, ["question", "unsteered", "scores", "best run", "scores"], rows)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def run_cma_es(ctx: StageContext, trait: str, variant: str) -> StageOutput:
    """Refine the best steering run's vector and coefficient with CMA-ES; the `cma_es` method."""
    from traitflow.steer.cma import METHOD, optimize_direction, steering_evaluator

    spec = ctx.experiment.spec.steering
    summary = ctx.artifacts.read(Steering, trait, variant)
    best = summary.get("best")
    if best is None:
        raise TraitflowError(f"{trait} ({variant}): no valid steering run to refine (coherence below "
                             f"{spec.search.min_coherence} everywhere)")
    loaded = ctx.load_model(variant)
    setup = steering_setup(ctx, trait, variant, loaded)
    layer = best["layer"]
    result = optimize_direction(
        steering_evaluator(loaded, judge_for(ctx, trait), setup, layer), setup.vectors[layer], best["coefficient"],
        direction=setup.direction, min_coherence=spec.search.min_coherence, subspace_dim=spec.cma_es.subspace_dim,
        sigma0=spec.cma_es.sigma0, generations=spec.cma_es.generations, popsize=spec.cma_es.popsize, seed=spec.cma_es.seed,
        log=ctx.log)
    baseline = summary["baseline"]["trait_mean"] or 0.0
    record = {"trait": trait, "variant": variant, "method": METHOD, "position": setup.position, "component": setup.component,
              "layer": layer, "start": {"coefficient": best["coefficient"], "trait_mean": best["trait_mean"]},
              "baseline": baseline, "delta": (result.fitness - setup.direction * baseline) if result.feasible else None,
              **result.to_dict()}
    # The vector first: a cma_es.json on disk then always has its vector beside it.
    CmaEs.write_vector(ctx.store, ctx.experiment.name, result.vector, trait, variant,
                       position=setup.position, component=setup.component, layer=layer,
                       metadata={"coefficient": result.coefficient, "trait": trait, "variant": variant,
                                 "fitness_history": result.history})
    path = ctx.artifacts.write(CmaEs, record, trait, variant)
    return StageOutput(path, {"layer": layer, "coefficient": result.coefficient, "fitness": result.fitness,
                              "start_fitness": result.start_fitness, "cosine_to_extracted": result.cosine_to_init,
                              "evaluations": result.evaluations})


def run_best_vector(ctx: StageContext, trait: str) -> StageOutput:
    from traitflow.steer.select import choose_best_vector

    exp = ctx.experiment
    summaries = {}
    for variant in steering_variants(exp):
        summary = ctx.artifacts.read_optional(Steering, trait, variant)
        if summary is not None:
            summaries[variant] = summary
    refined = {}
    for variant in steering_variants(exp) if exp.spec.steering.cma_es.enabled else []:
        record = ctx.artifacts.read_optional(CmaEs, trait, variant)
        if record is not None:
            refined[variant] = record
    src = vectors_context(ctx, "steering")
    evaluation = src.artifacts.read(ExtractionEval, trait, src.experiment.extraction_variant)
    choice = choose_best_vector(trait, summaries, evaluation, src.experiment.extraction_for(trait).positions[0],
                                src.experiment.extraction_variant,
                                refined=refined)
    path = ctx.artifacts.write(BestVector, choice, trait)
    threshold = exp.spec.steering.min_delta
    delta = choice.get("delta")
    numbers = {k: v for k, v in choice.items() if isinstance(v, (int, float, str)) and v is not None}
    return StageOutput(path, numbers, checks={"min_delta": Check(
        delta is not None and delta >= threshold,
        f"{trait}: best steering delta {delta if delta is None else round(delta, 1)} (threshold {threshold}; rule: {choice['rule']})")})
