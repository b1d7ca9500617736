"""Inference stages: inference_responses → (inference_activations →) projections (prompt set × variant),
and calibration (variant)."""

import hashlib
import json
import math
from typing import Any

from traitflow.artifacts import (
    Calibration,
    InferenceActivations,
    InferenceResponses,
    Projections,
    ReplayedResponses,
    responses_artifact,
)
from traitflow.errors import TraitflowError
from traitflow.stages.context import Markdown, ReadContext, StageContext, StageOutput, markdown_table
from traitflow.stages.which_vector import CMA_ES, has_vectors, monitored_vector, vectors_context, vectors_for_method

__all__ = ["inference_layers", "read_calibration", "responses_hash", "run_calibration", "run_inference_activations",
           "run_inference_responses", "run_projections", "run_replayed_responses", "saved_activations"]


def run_inference_responses(ctx: StageContext, prompt_set: str, variant: str) -> StageOutput:
    """Responses of a variant to a prompt set: generated (greedy or sampled) or imported from a file.
    The third mode of the reference toolkit, replaying another variant's tokens, is its own asset
    (`run_replayed_responses`), downstream of the source variant's responses."""
    from traitflow.monitor.inference import generate_inference_responses, import_responses

    spec = ctx.experiment.spec.inference
    prompts = ctx.project.prompt_sets[prompt_set]
    loaded = ctx.load_model(variant)
    if variant in spec.import_responses:
        record = import_responses(loaded, prompts, ctx.project.root / spec.import_responses[variant], ctx.project.root)
    else:
        record = generate_inference_responses(loaded, prompts, spec.max_new_tokens, spec.batch_size, sample=spec.sample)
    record["input_hashes"] = {"prompt_set": prompts.content_hash()}
    path = ctx.artifacts.write(InferenceResponses, record, prompt_set, variant)
    return StageOutput(path, {"n_prompts": len(record["items"]), "mode": record["mode"]},
                       samples=markdown_table(f"{variant}'s first replies ({record['mode']})", ["id", "prompt", "reply"],
                                              [[it["id"], it.get("prompt"), it.get("response")] for it in record["items"][:3]]))


def run_replayed_responses(ctx: StageContext, prompt_set: str, variant: str) -> StageOutput:
    """Another variant's exact token ids (`inference.replay: {variant: source}`) run through this
    variant's model: prefill only, nothing generated, so both variants are read on the same tokens."""
    from traitflow.monitor.inference import replay_responses

    source = ctx.experiment.spec.inference.replay[variant]
    source_record = ctx.artifacts.read_optional(InferenceResponses, prompt_set, source)
    if source_record is None:
        raise TraitflowError(f"{ctx.experiment.name}: {variant} replays {source}'s responses to {prompt_set}, which do not "
                             f"exist yet; materialize inference_responses {prompt_set}|{source} first")
    record = replay_responses(ctx.load_model(variant), source_record)
    record["input_hashes"] = {"prompt_set": ctx.project.prompt_sets[prompt_set].content_hash()}
    path = ctx.artifacts.write(ReplayedResponses, record, prompt_set, variant)
    return StageOutput(path, {"n_prompts": len(record["items"]), "mode": record["mode"], "replayed_from": source})


def responses_hash(record: dict) -> str:
    """Content hash of a responses record (token ids, texts, model identity): what saved activations were made from."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def run_inference_activations(ctx: StageContext, prompt_set: str, variant: str) -> StageOutput:
    """Every response token's residual activations at `inference.save_layers` (float16), so projections
    onto traits extracted later run without the model (`inference.save_activations: true`)."""
    from traitflow.extract.layers import parse_layers
    from traitflow.monitor.projections import capture_activations

    exp = ctx.experiment
    spec = exp.spec.inference
    responses = ctx.artifacts.read(responses_artifact(spec.replay, variant), prompt_set, variant)
    loaded = ctx.load_model(variant)
    try:
        layers = parse_layers(spec.save_layers, loaded.n_layers)
    except TraitflowError as exc:
        raise TraitflowError(f"{exp.path}: inference.save_layers: {exc}") from None
    saved = capture_activations(loaded, responses, layers, spec.batch_size)
    saved.metadata["input_hashes"] = {"responses": responses_hash(responses), "model": _model_version(ctx, variant)}
    path = ctx.artifacts.write(InferenceActivations, saved, prompt_set, variant)
    n_tokens = int(saved.offsets[-1])
    return StageOutput(path, {"n_prompts": len(responses["items"]), "n_tokens": n_tokens, "n_layers": len(layers),
                              "megabytes": round(n_tokens * len(layers) * loaded.hidden_size * 2 / 1e6, 3)})


def _model_version(ctx: StageContext, variant: str) -> str:
    from traitflow.model.fingerprint import model_version

    return model_version(ctx.experiment.variants[variant], ctx.project.root)


def saved_activations(ctx: StageContext, prompt_set: str, variant: str, responses: dict) -> dict | None:
    """The metadata of the partition's saved activations when `inference.save_activations` is on
    (the asset exists, so Dagster tracks them) and they were made from exactly these responses by
    exactly this model (content hashes of both: replayed or imported replies can stay the same
    while the weights change); else None."""
    if not ctx.experiment.spec.inference.save_activations:
        return None
    meta = InferenceActivations.read_metadata(ctx.store, ctx.experiment.name, prompt_set, variant)
    if meta is None:
        return None
    hashes = meta.get("input_hashes") if isinstance(meta.get("input_hashes"), dict) else {}
    if hashes.get("responses") != responses_hash(responses) or hashes.get("model") != _model_version(ctx, variant):
        ctx.log(f"projections: the saved activations of {prompt_set}|{variant} were made from other responses or "
                "another model; projecting with the model")
        return None
    return meta


def run_calibration(ctx: StageContext, variant: str) -> StageOutput:
    """Massive activation dims and mean norms per layer and component, on traitflow's neutral prompts."""
    from traitflow.monitor.calibration import calibrate, neutral_prompt_ids

    loaded = ctx.load_model(variant)
    record = calibrate(loaded, neutral_prompt_ids(loaded), batch_size=ctx.experiment.spec.inference.batch_size)
    record["variant"] = variant
    path = ctx.artifacts.write(Calibration, record, variant)
    top = record["massive"][-1]["dims"][0] if record["massive"] and record["massive"][-1]["dims"] else None
    return StageOutput(path, {"n_tokens": record["n_tokens"], "recurring_dims": str(record["recurring_dims"]),
                              "last_layer_top_dim": top["dim"] if top else -1,
                              "last_layer_top_ratio": (top or {}).get("ratio_to_median") or 0.0,
                              "last_layer_mean_norm": record["components"]["residual"]["mean_norm"][-1]})


def read_calibration(ctx: ReadContext, variant: str) -> dict:
    record = ctx.artifacts.read_optional(Calibration, variant)
    if record is None:
        raise TraitflowError(f"{ctx.experiment.name}: inference.score/clean_massive_dims need the calibration of "
                             f"{variant}; materialize `calibration` first")
    return record


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


def run_projections(ctx: StageContext, prompt_set: str, variant: str) -> StageOutput:
    from traitflow.monitor.projections import TraitProbe, project_responses, response_means

    exp = ctx.experiment
    responses = ctx.artifacts.read(responses_artifact(ctx.experiment.spec.inference.replay, variant), prompt_set, variant)
    # Saved activations of these very responses (`inference.save_activations`) spare the model when
    # they hold every layer a trait is monitored at.
    saved = saved_activations(ctx, prompt_set, variant, responses)
    loaded = ctx.load_model(variant) if saved is None else None
    n_layers = loaded.n_layers if loaded is not None else int(saved["n_layers"])  # type: ignore[index]
    src = vectors_context(ctx, "inference")
    probes, skipped, baselines = [], [], {}
    for trait in exp.traits:
        if trait in ctx.blocked_traits or not has_vectors(src, trait):
            skipped.append(trait)  # e.g. vetting left too few replies: there is no vector to monitor
            why = ctx.blocked_traits.get(trait) or f"extraction_eval of {src.experiment.name} missing"
            ctx.log(f"projections: no vector for {trait} ({why}); skipped")
            continue
        position, component, method, best = monitored_vector(ctx, trait)
        # `inference.method: cma_es` asks for the CMA-ES refinement by name; otherwise the extracted vectors.
        vectors = vectors_for_method(src, trait, method)
        layers = inference_layers(exp.spec.inference.layers, n_layers, best)
        defined = vectors.defined_layers(position, component, method)
        if method == CMA_ES:
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
    if saved is not None:
        needed = sorted({layer for p in probes for layer in p.layers})
        absent = [layer for layer in needed if layer not in saved["layers"]]
        if absent:
            ctx.log(f"projections: the saved activations of {prompt_set}|{variant} lack layers {absent} "
                    f"(inference.save_layers); projecting with the model")
            loaded = ctx.load_model(variant)
        else:
            options["activations"] = InferenceActivations.read_layers(ctx.store, exp.name, needed, prompt_set, variant)
    record = project_responses(loaded, responses, probes, exp.spec.inference.batch_size, **options)
    record["skipped_traits"] = skipped
    record["computed_from"] = "saved_activations" if "activations" in options else "model"
    path = ctx.artifacts.write(Projections, record, prompt_set, variant)
    from traitflow.charts import projection_charts

    chart = projection_charts(record)
    files = chart.write(path.parent, ctx.store)
    numbers: dict[str, Any] = {"n_prompts": len(record["items"]), "computed_from": record["computed_from"]}
    for probe in probes:
        means = [m for m in response_means(record, probe.trait, probe.layers[0]) if math.isfinite(m)]  # empty replies: nan
        if means:
            numbers[f"{probe.trait} mean (L{probe.layers[0]})"] = sum(means) / len(means)
    return StageOutput(path, numbers, files={"chart_html": files["html"]},
                       chart=Markdown(chart.markdown(f"{prompt_set} on {variant}")))
