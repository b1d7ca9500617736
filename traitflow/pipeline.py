"""One function per asset: read the upstream artifacts, call the engine, write the artifact.

Each `run_*` function works on one partition and returns the headline numbers for the asset's
metadata. They know nothing of Dagster: the asset bodies in `assets/` are a loop over partition
keys calling these, and tests call them directly.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment, Project
from traitflow.store import ArtifactStore, open_store

# Artifact file names, one per asset: the single source of truth for where things live.
FILES = {
    "responses": "responses.json",
    "activations": "activations.safetensors",
    "vectors": "vectors.safetensors",
    "extraction_eval": "extraction_eval.json",
    "inference_responses": "responses.json",
    "projections": "projections.json",
}


@dataclass
class StageContext:
    """What every stage needs: the project, one experiment, its store and a model loader."""

    project: Project
    experiment: Experiment
    store: ArtifactStore
    load_model: Callable[[str], Any]  # variant name -> LoadedModel (cached per process)
    log: Callable[[str], None] = field(default=print)

    @classmethod
    def create(cls, project: Project, experiment: str, load_model: Callable[[str], Any] | None = None,
               storage_uri: str | None = None, log: Callable[[str], None] = print) -> "StageContext":
        exp = project.experiments[experiment]
        store = open_store(storage_uri or exp.spec.storage.uri, project.root)
        if load_model is None:
            from traitflow.model.loading import MODEL_CACHE

            def load_model(variant: str) -> Any:
                return MODEL_CACHE.get(exp.variants[variant], project.root)

        return cls(project, exp, store, load_model, log)

    def path(self, asset: str, partition: tuple[str, ...]) -> Path:
        return self.store.path(self.experiment.name, asset, partition, FILES[asset])


def trait_partition(trait: str, variant: str) -> tuple[str, ...]:
    return (*trait.split("/"), variant)


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


def run_activations(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.capture import capture_trait_activations
    from traitflow.extract.layers import parse_layers

    spec = ctx.experiment.spec.extraction
    part = trait_partition(trait, variant)
    responses = ctx.store.read_json(ctx.path("responses", part))
    loaded = ctx.load_model(variant)
    layers = parse_layers(spec.layers, loaded.n_layers)
    acts = capture_trait_activations(loaded, responses, layers, spec.positions, spec.component, spec.batch_size)
    if int(acts.labels.sum()) == 0 or int((acts.labels == 0).sum()) == 0:
        raise TraitflowError(f"{trait} ({variant}): no usable responses on one side; cannot extract a vector")
    tensors, meta = acts.to_tensors()
    meta["input_hashes"] = responses.get("input_hashes", {})
    path = ctx.path("activations", part)
    ctx.store.write_tensors(path, tensors, meta)
    return {"path": str(path), "n": len(acts.labels), "layers": len(layers), "dropped_empty": acts.metadata["dropped_empty"]}


def _load_activations(ctx: StageContext, part: tuple[str, ...]):
    from traitflow.extract.capture import ActivationSet

    return ActivationSet.from_tensors(*ctx.store.read_tensors(ctx.path("activations", part)))


def load_vectors(ctx: StageContext, trait: str, variant: str):
    from traitflow.extract.vectors import VectorSet

    return VectorSet.from_tensors(*ctx.store.read_tensors(ctx.path("vectors", trait_partition(trait, variant))))


def run_vectors(ctx: StageContext, trait: str, variant: str) -> dict:
    from traitflow.extract.vectors import extract_vectors

    spec = ctx.experiment.spec.extraction
    part = trait_partition(trait, variant)
    acts = _load_activations(ctx, part)
    vectors = extract_vectors(acts, list(spec.methods), spec.val_split, spec.seed, acts.metadata.get("input_hashes", {}))
    tensors, meta = vectors.to_tensors()
    path = ctx.path("vectors", part)
    ctx.store.write_tensors(path, tensors, meta)
    return {"path": str(path), "n_vectors": len(vectors.vectors) * len(vectors.layers),
            "n_train": meta["n_train"], "n_val": meta["n_val"]}


def run_extraction_eval(ctx: StageContext, trait: str, variant: str) -> dict:
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
    first = best[next(iter(best))]
    return {"path": str(path), "best_method": first.method, "best_layer": first.layer,
            "best_val_accuracy": first.val_accuracy, "best_cohens_d": first.cohens_d}


def read_extraction_eval(ctx: StageContext, trait: str, variant: str) -> dict:
    return ctx.store.read_json(ctx.path("extraction_eval", trait_partition(trait, variant)))


# --------------------------------------------------------------------------- inference
def run_inference_responses(ctx: StageContext, prompt_set: str, variant: str) -> dict:
    from traitflow.monitor.inference import generate_inference_responses

    spec = ctx.experiment.spec.inference
    loaded = ctx.load_model(variant)
    record = generate_inference_responses(loaded, ctx.project.prompt_sets[prompt_set], spec.max_new_tokens, spec.batch_size)
    record["input_hashes"] = {"prompt_set": ctx.project.prompt_sets[prompt_set].content_hash()}
    path = ctx.path("inference_responses", (*prompt_set.split("/"), variant))
    ctx.store.write_json(path, record)
    return {"path": str(path), "n_prompts": len(record["items"])}


def monitored_vector(ctx: StageContext, trait: str) -> tuple[str, str, str, int]:
    """(position, component, method, best layer) of the vector a trait is monitored with."""
    spec = ctx.experiment.spec
    position = spec.inference.position or spec.extraction.positions[0]
    if position not in spec.extraction.positions:
        raise TraitflowError(f"{ctx.experiment.path}: inference.position {position!r} is not among extraction.position")
    evaluation = read_extraction_eval(ctx, trait, ctx.experiment.extraction_variant)
    rows = [r for r in evaluation["scores"] if r["position"] == position]
    if spec.inference.method:
        rows = [r for r in rows if r["method"] == spec.inference.method]
        if not rows:
            raise TraitflowError(f"{ctx.experiment.path}: inference.method {spec.inference.method!r} was not extracted")
    from traitflow.extract.evaluate import VectorScore, best_score

    best = best_score([VectorScore(**r) for r in rows])
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
    probes = []
    for trait in exp.traits:
        position, component, method, best = monitored_vector(ctx, trait)
        vectors = load_vectors(ctx, trait, exp.extraction_variant)
        layers = inference_layers(exp.spec.inference.layers, loaded.n_layers, best)
        missing = [layer for layer in layers if layer not in vectors.layers]
        if missing:
            raise TraitflowError(f"{exp.path}: inference.layers asks for layers {missing} that extraction did not cover")
        stacked = vectors.vectors[(position, component, method)]
        probes.append(TraitProbe(trait, position, component, method, layers,
                                 stacked[[vectors.layers.index(layer) for layer in layers]]))
    record = project_responses(loaded, responses, probes, exp.spec.inference.batch_size)
    path = ctx.path("projections", (*prompt_set.split("/"), variant))
    ctx.store.write_json(path, record)
    summary: dict[str, Any] = {"path": str(path), "n_prompts": len(record["items"])}
    for probe in probes:
        means = response_means(record, probe.trait, probe.layers[0])
        summary[f"{probe.trait} mean (L{probe.layers[0]})"] = sum(means) / max(1, len(means))
    return summary
