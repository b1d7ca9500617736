"""One function per asset: read the upstream artifacts, call the engine, write the artifact.

Each `run_*` function works on one partition and returns the headline numbers for the asset's
metadata. They know nothing of Dagster: the asset bodies in `assets/` are a loop over partition
keys calling these, and tests call them directly.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.graph import FILES  # the artifact file of each asset: the asset table's
from traitflow.specs.loader import Experiment, Project
from traitflow.store import ArtifactStore, open_store


@dataclass(frozen=True)
class Markdown:
    """A metadata value to show as markdown (charts embed their PNG this way)."""

    text: str


@dataclass(frozen=True)
class Check:
    """The outcome of one quality gate for one partition (an asset check in Dagster)."""

    passed: bool
    detail: str


@dataclass
class StageContext:
    """What every stage needs: the project, one experiment, its store and a model loader."""

    project: Project
    experiment: Experiment
    store: ArtifactStore
    load_model: Callable[[str], Any]  # variant name -> LoadedModel (cached per process)
    log: Callable[[str], None] = field(default=print)
    storage_override: str | None = None  # TRAITFLOW_STORAGE / --storage: replaces every experiment's storage.uri

    @classmethod
    def create(cls, project: Project, experiment: str, load_model: Callable[[str], Any] | None = None,
               storage_uri: str | None = None, log: Callable[[str], None] = print) -> "StageContext":
        exp = project.require(experiment)
        store = open_store(storage_uri or exp.spec.storage.uri, project.root)
        if load_model is None:
            from traitflow.model.loading import MODEL_CACHE

            def load_model(variant: str) -> Any:
                return MODEL_CACHE.get(exp.variants[variant], project.root)

        return cls(project, exp, store, load_model, log, storage_uri or None)

    def path(self, asset: str, partition: tuple[str, ...]) -> Path:
        return self.store.path(self.experiment.name, asset, partition, FILES[asset])


def trait_partition(trait: str, variant: str) -> tuple[str, ...]:
    return (*trait.split("/"), variant)


def vectors_context(ctx: StageContext, stage: str) -> StageContext:
    """Where a stage ("steering", "inference") reads vectors and their evaluation: the experiment
    named by its `vectors_from` (extract once, apply everywhere), else this one."""
    source = ctx.experiment.vector_source(stage)
    if source is ctx.experiment:
        return ctx

    def no_model(variant: str) -> Any:
        raise TraitflowError(f"{source.name}: its vectors are read from storage; no model of it is loaded here")

    store = open_store(ctx.storage_override or source.spec.storage.uri, ctx.project.root)
    return StageContext(ctx.project, source, store, no_model, ctx.log, ctx.storage_override)


def require_extraction(src: StageContext, trait: str, stage: str) -> None:
    """A clear error when vectors another experiment should provide are not there yet."""
    if not src.path("extraction_eval", trait_partition(trait, src.experiment.extraction_variant)).exists():
        raise TraitflowError(f"{stage}.vectors_from: experiment {src.experiment.name} has no vectors for {trait} yet; "
                             f"run `traitflow run {src.experiment.name} --stages extraction` first")


# --------------------------------------------------------------------------- extraction
def run_responses(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.responses import generate_trait_responses

    spec = ctx.experiment.spec.extraction
    dataset = ctx.project.traits[trait]
    loaded = ctx.load_model(variant)
    record = generate_trait_responses(loaded, dataset, spec.max_new_tokens, spec.batch_size)
    record["input_hashes"] = {"trait": dataset.content_hash()}
    path = ctx.path("responses", trait_partition(trait, variant))
    ctx.store.write_json(path, record)
    lengths = [len(it["response_ids"]) for it in record["items"]]
    return {"path": str(path), "n_positive": len(dataset.positive), "n_negative": len(dataset.negative),
            "mean_response_tokens": sum(lengths) / max(1, len(lengths))}


def judge_cache_path(ctx: StageContext) -> Path:
    """One SQLite judge cache per project: keyed by judge model, template and inputs, so experiments share it."""
    return ctx.project.root / ".traitflow" / "judge_cache.sqlite"


def judge_for(ctx: StageContext, trait: str):
    """The trait's judge: its trait.yaml `judge:` when set, else the experiment's."""
    from traitflow.judge import judge_spec_for, make_judge

    spec = judge_spec_for(ctx.experiment.spec, ctx.project.traits[trait])
    return make_judge(spec, judge_cache_path(ctx), load_variant=ctx.load_model)


def run_vetting(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.vetting import vet_responses

    spec = ctx.experiment.spec.extraction.vetting
    part = trait_partition(trait, variant)
    responses = ctx.store.read_json(ctx.path("responses", part))
    judge = judge_for(ctx, trait) if spec.enabled else None
    record = vet_responses(responses, ctx.project.traits[trait], spec, judge, ctx.experiment.extraction_for(trait).positions)
    path = ctx.path("vetting", part)
    ctx.store.write_json(path, record)
    summary = record["summary"]
    ok = summary["passed_positive"] >= spec.min_per_side and summary["passed_negative"] >= spec.min_per_side
    return {
        "path": str(path), **{k: v for k, v in summary.items() if v is not None},
        "checks": {"min_per_side": Check(
            ok or not spec.enabled,
            f"{trait}: {summary['passed_positive']} positive and {summary['passed_negative']} negative replies passed "
            f"(need {spec.min_per_side} each; {summary['none']} unscored)")},
    }


def read_vetting(ctx: StageContext, trait: str, variant: str) -> dict:
    return ctx.store.read_json(ctx.path("vetting", trait_partition(trait, variant)))


def vetting_passed(ctx: StageContext, trait: str, variant: str) -> bool:
    """Whether a trait has enough vetted replies on both sides to extract from."""
    spec = ctx.experiment.spec.extraction.vetting
    summary = read_vetting(ctx, trait, variant)["summary"]
    return not spec.enabled or min(summary["passed_positive"], summary["passed_negative"]) >= spec.min_per_side


def run_activations(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.capture import capture_trait_activations
    from traitflow.extract.layers import parse_layers

    spec = ctx.experiment.extraction_for(trait)
    part = trait_partition(trait, variant)
    responses = ctx.store.read_json(ctx.path("responses", part))
    vetting = read_vetting(ctx, trait, variant)
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
    tensors, meta = acts.to_tensors()
    meta["input_hashes"] = responses.get("input_hashes", {})
    meta["vetting"] = {"enabled": vetting["enabled"], "judge": vetting.get("judge"), "kept": len(responses["items"])}
    path = ctx.path("activations", part)
    ctx.store.write_tensors(path, tensors, meta)
    return {"path": str(path), "n": len(acts.labels), "layers": len(layers), "dropped_empty": acts.metadata["dropped_empty"]}


def _load_activations(ctx: StageContext, part: tuple[str, ...]):
    from traitflow.extract.capture import ActivationSet

    return ActivationSet.from_tensors(*ctx.store.read_tensors(ctx.path("activations", part)))


def load_vectors(ctx: StageContext, trait: str, variant: str):
    """The trait's extracted vectors, plus the CMA-ES refinement (method `cma_es`) when one exists.

    `cma_es` is defined at the one layer it was optimised at; its other rows are NaN, and every
    consumer uses only finite rows (see `VectorSet.defined_layers`).
    """
    import torch

    from traitflow.extract.vectors import VectorSet

    vectors = VectorSet.from_tensors(*ctx.store.read_tensors(ctx.path("vectors", trait_partition(trait, variant))))
    for steered in sorted(steering_variants(ctx.experiment)):
        refined = ctx.store.path(ctx.experiment.name, "cma_es", trait_partition(trait, steered), "vectors.safetensors")
        if not refined.exists():
            continue
        tensors, meta = ctx.store.read_tensors(refined)
        layer = int(meta["layers"][0])
        if layer not in vectors.layers:
            continue
        for name, value in tensors.items():
            _, position, component, method = name.split("/", 3) if name.count("/") == 3 else (None,) * 4
            if method is None:
                continue
            full = torch.full((len(vectors.layers), value.shape[-1]), float("nan"))
            full[vectors.layers.index(layer)] = value[0]
            vectors.vectors[(position, component, method)] = full
            vectors.baselines[(position, component, method)] = torch.full((len(vectors.layers),), float("nan"))
            vectors.train_accuracy[(position, component, method)] = torch.full((len(vectors.layers),), float("nan"))
        vectors.metadata.setdefault("refined", {})["cma_es"] = {"layer": layer, "variant": steered,
                                                               "coefficient": meta.get("coefficient")}
        break
    return vectors


def run_vectors(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.vectors import extract_vectors

    spec = ctx.experiment.extraction_for(trait)
    part = trait_partition(trait, variant)
    acts = _load_activations(ctx, part)
    vectors = extract_vectors(acts, list(spec.methods), spec.val_split, spec.seed, acts.metadata.get("input_hashes", {}),
                              clean_massive=spec.clean_massive_dims)
    tensors, meta = vectors.to_tensors()
    path = ctx.path("vectors", part)
    ctx.store.write_tensors(path, tensors, meta)
    return {"path": str(path), "n_vectors": len(vectors.vectors) * len(vectors.layers),
            "n_train": meta["n_train"], "n_val": meta["n_val"]}


def run_extraction_eval(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.charts import eval_heatmap
    from traitflow.extract.vectors import best_per_position, evaluate_vectors

    part = trait_partition(trait, variant)
    scores = evaluate_vectors(_load_activations(ctx, part), load_vectors(ctx, trait, variant))
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
    path = ctx.path("extraction_eval", part)
    ctx.store.write_json(path, record)
    chart = eval_heatmap(record["scores"], trait)
    files = chart.write(path.parent)
    threshold = ctx.experiment.spec.extraction.min_val_accuracy
    first = best[next(iter(best))]
    return {
        "path": str(path), "chart_html": str(files["html"]),
        "best_method": first.method, "best_layer": first.layer,
        "best_val_accuracy": first.val_accuracy, "best_cohens_d": first.cohens_d,
        "chart": Markdown(chart.markdown(f"{trait} ({variant})")),
        "checks": {
            "polarity": Check(all(s.polarity == 1 for s in best.values()),
                              f"{trait}: best vectors' held-out polarity " + ", ".join(f"{p} {s.polarity:+d}" for p, s in best.items())),
            "min_val_accuracy": Check(all(s.val_accuracy >= threshold for s in best.values()),
                                      f"{trait}: best held-out accuracy " + ", ".join(f"{p} {s.val_accuracy:.3f}" for p, s in best.items())
                                      + f" (threshold {threshold})"),
        },
    }


def run_logit_lens(ctx: StageContext, trait: str, variant: str) -> dict:
    """Top and bottom tokens of the best vector at each position, at every extracted layer."""
    from traitflow.lens import lens_record, logit_lens

    spec = ctx.experiment.spec.logit_lens
    vectors = load_vectors(ctx, trait, variant)
    evaluation = read_extraction_eval(ctx, trait, variant)
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
    path = ctx.path("logit_lens", trait_partition(trait, variant))
    ctx.store.write_json(path, {"trait": trait, "variant": variant, "lenses": lenses})
    summary: dict[str, Any] = {"path": str(path)}
    for lens in lenses:
        last = lens["layers"][-1]
        summary[f"top tokens {lens['position']} L{last['layer']}"] = " ".join(t for t, _ in last["top"][:8])
    return summary


def read_extraction_eval(ctx: StageContext, trait: str, variant: str) -> dict:
    return ctx.store.read_json(ctx.path("extraction_eval", trait_partition(trait, variant)))


# --------------------------------------------------------------------------- steering
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
    evaluation = read_extraction_eval(src, trait, source)
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


def run_steering_stage(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.charts import steering_chart
    from traitflow.steer.run import ResultsLog, grid_keys, run_key, run_steering
    from traitflow.steer.search import Schedule

    search = ctx.experiment.spec.steering.search
    coefficients = ctx.experiment.spec.steering.coefficients
    loaded = ctx.load_model(variant)
    setup = steering_setup(ctx, trait, variant, loaded)
    schedule = Schedule(steps=search.steps, start=search.start, up=search.up, down=search.down,
                        coherence_target=search.coherence_target)
    folder = ctx.path("steering", trait_partition(trait, variant)).parent
    summary = run_steering(loaded, judge_for(ctx, trait), setup, schedule, search.min_coherence, folder,
                           header_extra={"experiment": ctx.experiment.name}, log=ctx.log, coefficients=coefficients)
    entries = ResultsLog(folder).read()
    if coefficients:  # chart the grid only, like the summary (the log may hold runs of an earlier search)
        keep = grid_keys(setup.layers, coefficients)
        entries = [e for e in entries if e.get("type") is not None or "config" not in e or run_key(e) in keep]
    chart = steering_chart(entries, trait, min_coherence=search.min_coherence, direction=setup.direction)
    files = chart.write(folder)
    best = summary["best"] or {}
    return {
        "path": str(folder / "summary.json"), "results_log": str(folder / "results.jsonl"), "chart_html": str(files["html"]),
        "baseline_trait": summary["baseline"]["trait_mean"], "baseline_coherence": summary["baseline"]["coherence_mean"],
        "best_delta": best.get("delta"), "best_layer": best.get("layer"), "best_coefficient": best.get("coefficient"),
        "best_coherence": best.get("coherence_mean"), "runs": summary["runs"],
        "chart": Markdown(chart.markdown(f"{trait} steered on {variant}")),
    }


def run_cma_es(ctx: StageContext, trait: str, variant: str) -> dict:
    """Refine the best steering run's vector and coefficient with CMA-ES; the `cma_es` method."""
    from traitflow.steer.cma import METHOD, optimize_direction, steering_evaluator

    spec = ctx.experiment.spec.steering
    part = trait_partition(trait, variant)
    summary = ctx.store.read_json(ctx.path("steering", part))
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
    path = ctx.path("cma_es", part)
    ctx.store.write_json(path, record)
    ctx.store.write_tensors(path.parent / "vectors.safetensors",
                            {f"vector/{setup.position}/{setup.component}/{METHOD}": result.vector[None]},
                            {"layers": [layer], "method": METHOD, "coefficient": result.coefficient, "trait": trait,
                             "variant": variant, "fitness_history": result.history})
    return {"path": str(path), "layer": layer, "coefficient": result.coefficient, "fitness": result.fitness,
            "start_fitness": result.start_fitness, "cosine_to_extracted": result.cosine_to_init,
            "evaluations": result.evaluations}


def run_best_vector(ctx: StageContext, trait: str) -> dict:
    from traitflow.steer.select import choose_best_vector

    exp = ctx.experiment
    summaries = {}
    for variant in steering_variants(exp):
        path = ctx.path("steering", trait_partition(trait, variant))
        if path.exists():
            summaries[variant] = ctx.store.read_json(path)
    refined = {}
    for variant in steering_variants(exp) if exp.spec.steering.cma_es.enabled else []:
        path = ctx.path("cma_es", trait_partition(trait, variant))
        if path.exists():
            refined[variant] = ctx.store.read_json(path)
    src = vectors_context(ctx, "steering")
    evaluation = read_extraction_eval(src, trait, src.experiment.extraction_variant)
    choice = choose_best_vector(trait, summaries, evaluation, src.experiment.extraction_for(trait).positions[0],
                                src.experiment.extraction_variant,
                                refined=refined)
    path = ctx.store.path(exp.name, "best_vector", tuple(trait.split("/")), FILES["best_vector"])
    ctx.store.write_json(path, choice)
    threshold = exp.spec.steering.min_delta
    delta = choice.get("delta")
    numbers = {k: v for k, v in choice.items() if isinstance(v, (int, float, str)) and v is not None}
    numbers["path"] = str(path)
    numbers["checks"] = {"min_delta": Check(
        delta is not None and delta >= threshold,
        f"{trait}: best steering delta {delta if delta is None else round(delta, 1)} (threshold {threshold}; rule: {choice['rule']})")}
    return numbers


def steering_variants(exp: Experiment) -> list[str]:
    return list(exp.spec.steering.variants) or [exp.extraction_variant]


def read_best_vector(ctx: StageContext, trait: str) -> dict | None:
    path = ctx.store.path(ctx.experiment.name, "best_vector", tuple(trait.split("/")), FILES["best_vector"])
    return ctx.store.read_json(path) if path.exists() else None


# --------------------------------------------------------------------------- inference
def run_inference_responses(ctx: StageContext, prompt_set: str, variant: str) -> dict:
    """Responses of a variant to a prompt set: generated (greedy or sampled), imported from a file,
    or replayed from another variant's exact token ids (the three modes of the reference toolkit)."""
    from traitflow.monitor.inference import generate_inference_responses, import_responses, replay_responses

    spec = ctx.experiment.spec.inference
    prompts = ctx.project.prompt_sets[prompt_set]
    loaded = ctx.load_model(variant)
    if variant in spec.replay:
        source = spec.replay[variant]
        source_path = ctx.path("inference_responses", (*prompt_set.split("/"), source))
        if source_path.exists():
            source_record = ctx.store.read_json(source_path)
        else:  # same run, later partition: generate the source's tokens now (greedy is deterministic)
            source_record = generate_inference_responses(ctx.load_model(source), prompts, spec.max_new_tokens, spec.batch_size,
                                                         sample=spec.sample)
        record = replay_responses(loaded, source_record)
    elif variant in spec.import_responses:
        record = import_responses(loaded, prompts, ctx.project.root / spec.import_responses[variant], ctx.project.root)
    else:
        record = generate_inference_responses(loaded, prompts, spec.max_new_tokens, spec.batch_size, sample=spec.sample)
    record["input_hashes"] = {"prompt_set": prompts.content_hash()}
    path = ctx.path("inference_responses", (*prompt_set.split("/"), variant))
    ctx.store.write_json(path, record)
    return {"path": str(path), "n_prompts": len(record["items"]), "mode": record["mode"]}


def run_calibration(ctx: StageContext, variant: str) -> dict:
    """Massive activation dims and mean norms per layer and component, on traitflow's neutral prompts."""
    from traitflow.monitor.calibration import calibrate, neutral_prompt_ids

    loaded = ctx.load_model(variant)
    record = calibrate(loaded, neutral_prompt_ids(loaded), batch_size=ctx.experiment.spec.inference.batch_size)
    record["variant"] = variant
    path = ctx.store.path(ctx.experiment.name, "calibration", (variant,), FILES["calibration"])
    ctx.store.write_json(path, record)
    top = record["massive"][-1]["dims"][0] if record["massive"] and record["massive"][-1]["dims"] else None
    return {"path": str(path), "n_tokens": record["n_tokens"], "recurring_dims": str(record["recurring_dims"]),
            "last_layer_top_dim": top["dim"] if top else -1,
            "last_layer_top_ratio": (top or {}).get("ratio_to_median") or 0.0,
            "last_layer_mean_norm": record["components"]["residual"]["mean_norm"][-1]}


def read_calibration(ctx: StageContext, variant: str) -> dict:
    path = ctx.store.path(ctx.experiment.name, "calibration", (variant,), FILES["calibration"])
    if not path.exists():
        raise TraitflowError(f"{ctx.experiment.name}: inference.score/clean_massive_dims need the calibration of "
                             f"{variant}; materialize `calibration` first")
    return ctx.store.read_json(path)


def monitored_vector(ctx: StageContext, trait: str) -> tuple[str, str, str, int]:
    """(position, component, method, best layer) of the vector a trait is monitored with."""
    spec = ctx.experiment.spec
    src = vectors_context(ctx, "inference")
    positions = src.experiment.extraction_for(trait).positions
    position = spec.inference.position or positions[0]
    if position not in positions:
        raise TraitflowError(f"{ctx.experiment.path}: inference.position {position!r} is not among extraction.position")
    evaluation = read_extraction_eval(src, trait, src.experiment.extraction_variant)
    rows = [r for r in evaluation["scores"] if r["position"] == position]
    if spec.inference.method == "cma_es":
        refined = load_vectors(src, trait, src.experiment.extraction_variant).metadata.get("refined", {}).get("cma_es")
        if refined is None:
            raise TraitflowError(f"{ctx.experiment.path}: inference.method cma_es needs steering.cma_es for {trait}")
        component = next(iter({r["component"] for r in rows}), "residual")
        return position, component, "cma_es", refined["layer"]
    if spec.inference.method:
        rows = [r for r in rows if r["method"] == spec.inference.method]
        if not rows:
            raise TraitflowError(f"{ctx.experiment.path}: inference.method {spec.inference.method!r} was not extracted")
    from traitflow.extract.evaluate import VectorScore, best_score

    best = best_score([VectorScore.from_dict(r) for r in rows])
    return position, best.component, best.method, best.layer


def inference_layers(spec: str | int, n_layers: int, best: int) -> list[int]:
    """Layers to monitor a trait at. `best±N` past either end of the model is skipped rather than an
    error, since the best layer differs per trait; explicit layers are still bounds-checked."""
    from traitflow.extract.layers import parse_layers

    layers: set[int] = set()
    for token in str(spec).split(","):
        relative = token.strip().startswith("best")
        try:
            layers.update(parse_layers(token, n_layers, best=best))
        except TraitflowError:
            if not relative:
                raise
    return sorted(layers) or [best]


def run_projections(ctx: StageContext, prompt_set: str, variant: str) -> dict:
    from traitflow.monitor.projections import TraitProbe, project_responses, response_means

    exp = ctx.experiment
    responses = ctx.store.read_json(ctx.path("inference_responses", (*prompt_set.split("/"), variant)))
    loaded = ctx.load_model(variant)
    src = vectors_context(ctx, "inference")
    probes, skipped, baselines = [], [], {}
    for trait in exp.traits:
        if not src.path("extraction_eval", trait_partition(trait, src.experiment.extraction_variant)).exists():
            skipped.append(trait)  # e.g. vetting left too few replies: there is no vector to monitor
            ctx.log(f"projections: no vector for {trait} (extraction_eval of {src.experiment.name} missing); skipped")
            continue
        position, component, method, best = monitored_vector(ctx, trait)
        vectors = load_vectors(src, trait, src.experiment.extraction_variant)
        layers = inference_layers(exp.spec.inference.layers, loaded.n_layers, best)
        defined = vectors.defined_layers(position, component, method)
        if method == "cma_es":
            layers = [layer for layer in layers if layer in defined]  # a refinement exists at its one layer
        missing = [layer for layer in layers if layer not in defined]
        if missing:
            raise TraitflowError(f"{exp.path}: inference.layers asks for layers {missing} that extraction did not cover")
        stacked = vectors.vectors[(position, component, method)]
        rows = [vectors.layers.index(layer) for layer in layers]
        probes.append(TraitProbe(trait, position, component, method, layers, stacked[rows]))
        baselines[trait] = [float(vectors.baselines[(position, component, method)][r]) for r in rows]
    if not probes:
        raise TraitflowError(f"{exp.name}: no trait has extracted vectors yet; materialize extraction_eval first")
    spec = exp.spec.inference
    options: dict[str, Any] = {"mode": spec.score, "response_only": spec.response_only}
    if spec.score == "normalized" or spec.clean_massive_dims:
        from traitflow.monitor.calibration import massive_dims, mean_norms

        calibration = read_calibration(ctx, variant)
        options["mean_norms"] = mean_norms(calibration) if spec.score == "normalized" else None
        options["clean_dims"] = massive_dims(calibration) if spec.clean_massive_dims else None
    if spec.centre:
        for probe in probes:
            if not all(math.isfinite(b) for b in baselines[probe.trait]):
                raise TraitflowError(f"{exp.path}: inference.centre needs each vector's class-midpoint baseline; "
                                     f"{probe.trait}'s {probe.method} vectors have none")
        options["centre"] = {p.trait: dict(zip(p.layers, baselines[p.trait], strict=True)) for p in probes}
    record = project_responses(loaded, responses, probes, exp.spec.inference.batch_size, **options)
    record["skipped_traits"] = skipped
    path = ctx.path("projections", (*prompt_set.split("/"), variant))
    ctx.store.write_json(path, record)
    from traitflow.charts import projection_charts

    chart = projection_charts(record)
    files = chart.write(path.parent)
    summary: dict[str, Any] = {"path": str(path), "n_prompts": len(record["items"]), "chart_html": str(files["html"]),
                               "chart": Markdown(chart.markdown(f"{prompt_set} on {variant}"))}
    for probe in probes:
        means = [m for m in response_means(record, probe.trait, probe.layers[0]) if math.isfinite(m)]  # empty replies: nan
        if means:
            summary[f"{probe.trait} mean (L{probe.layers[0]})"] = sum(means) / len(means)
    return summary


# --------------------------------------------------------------------------- comparison
def comparison_key(a: str, b: str, prompt_set: str) -> str:
    return f"{a}_vs_{b}/{prompt_set}"


def comparison_keys(exp: Experiment) -> list[str]:
    return [comparison_key(c.a, c.b, c.prompt_set) for c in exp.spec.comparisons]


def comparison_vector(ctx: StageContext, trait: str) -> tuple[str, str, str]:
    """The vectors a comparison measures with: the steering position (the upcoming choice, not the
    tokens already emitted — DESIGN §9) and its best extracted method, at every layer."""
    src = vectors_context(ctx, "inference")
    position = ctx.experiment.spec.steering.position or src.experiment.extraction_for(trait).positions[0]
    best = read_extraction_eval(src, trait, src.experiment.extraction_variant)["best"]
    row = best.get(position) or next(iter(best.values()))
    return row["position"], row["component"], row["method"]


def run_variant_diff(ctx: StageContext, comparison: str) -> dict:
    """Replay A's responses through A and B; per trait and layer, how far B moves along the trait."""
    from traitflow.compare.diff import Probe, compare_variants

    exp = ctx.experiment
    spec = next(c for c in exp.spec.comparisons if comparison_key(c.a, c.b, c.prompt_set) == comparison)
    responses = ctx.store.read_json(ctx.path("inference_responses", (*spec.prompt_set.split("/"), spec.a)))
    probes = []
    src = vectors_context(ctx, "inference")
    for trait in exp.traits:
        if not src.path("extraction_eval", trait_partition(trait, src.experiment.extraction_variant)).exists():
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
    path = ctx.store.path(exp.name, "variant_diff", tuple(comparison.split("/")), "variant_diff.json")
    ctx.store.write_json(path, record)
    from traitflow.charts import comparison_charts

    chart = comparison_charts(record)
    files = chart.write(path.parent)
    numbers: dict[str, Any] = {"path": str(path), "n_prompts": record["n_prompts"], "chart_html": str(files["html"]),
                               "chart": Markdown(chart.markdown(comparison))}
    for trait, info in record["traits"].items():
        numbers[f"{trait} peak d (L{info['peak']['layer']})"] = info["peak"]["cohens_d"]
    return numbers


def read_variant_diff(ctx: StageContext, comparison: str) -> dict | None:
    path = ctx.store.path(ctx.experiment.name, "variant_diff", tuple(comparison.split("/")), "variant_diff.json")
    return ctx.store.read_json(path) if path.exists() else None
