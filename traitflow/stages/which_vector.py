"""Which vector to use: the one place that decides it, for stages and for report, export and monitor.

- Where vectors come from: an experiment's own extraction, or the one its `<stage>.vectors_from`
  names (:func:`vectors_context`, :func:`require_extraction`).
- The extracted vectors of a trait (:func:`load_vectors`): the `vectors` artifact and nothing else.
  A CMA-ES refinement is a separate artifact (`cma_es`, downstream of steering); only the consumers
  that ask for method `cma_es` read it (:func:`refined_vectors`, :func:`vectors_for_method`), so no
  upstream asset ever reads a descendant of its own.
- Which vector a trait is monitored with (:func:`monitored_vector`), compared with
  (:func:`comparison_vector`), and which variants steering runs on (:func:`steering_variants`).

Functions take a :class:`ReadContext` (a StageContext is one): none of them loads a model.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from traitflow.artifacts import CmaEs, ExtractionEval, Vectors
from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment
from traitflow.stages.context import ReadContext

if TYPE_CHECKING:
    from traitflow.extract.vectors import VectorSet

CMA_ES = "cma_es"  # the method name of a CMA-ES refinement (traitflow.steer.cma.METHOD, without importing torch)


def vectors_context(ctx: ReadContext, stage: str) -> ReadContext:
    """Where a stage ("steering", "inference") reads vectors and their evaluation: the experiment
    named by its `vectors_from` (extract once, apply everywhere), else this one."""
    source = ctx.experiment.vector_source(stage)
    return ctx if source is ctx.experiment else ctx.for_experiment(source)


def require_extraction(src: ReadContext, trait: str, stage: str) -> None:
    """A clear error when vectors another experiment should provide are not there yet."""
    if not src.artifacts.exists(ExtractionEval, trait, src.experiment.extraction_variant):
        raise TraitflowError(f"{stage}.vectors_from: experiment {src.experiment.name} has no vectors for {trait} yet; "
                             f"run `traitflow run {src.experiment.name} --stages extraction` first")


def has_vectors(src: ReadContext, trait: str) -> bool:
    """Whether the trait's extraction finished (its evaluation exists) in `src`."""
    return src.artifacts.exists(ExtractionEval, trait, src.experiment.extraction_variant)


def load_vectors(ctx: ReadContext, trait: str, variant: str) -> "VectorSet":
    """The trait's extracted vectors (the `vectors` artifact of `ctx`'s experiment), nothing else."""
    return ctx.artifacts.read(Vectors, trait, variant)


def steering_variants(exp: Experiment) -> list[str]:
    return list(exp.spec.steering.variants) or [exp.extraction_variant]


def refined_vectors(ctx: ReadContext, trait: str) -> tuple[str, "VectorSet"] | None:
    """The CMA-ES refinement of a trait in `ctx`'s experiment: (steered variant, one-layer VectorSet)
    of the first steered variant, in sorted order, that has one; None when none has, or when that
    experiment has `steering.cma_es.enabled: false` (a leftover of an earlier run is not used).
    `cma_es.json` marks a finished refinement: run_cma_es writes it after the vector."""
    if not ctx.experiment.spec.steering.cma_es.enabled:
        return None
    for variant in sorted(steering_variants(ctx.experiment)):
        if CmaEs.exists(ctx.store, ctx.experiment.name, trait, variant):
            return variant, CmaEs.read_vectors(ctx.store, ctx.experiment.name, trait, variant)
    return None


def _no_refinement(src: ReadContext, trait: str, asker: str) -> TraitflowError:
    if not src.experiment.spec.steering.cma_es.enabled:
        return TraitflowError(f"{src.experiment.path}: {asker} needs steering.cma_es.enabled")
    return TraitflowError(f"{src.experiment.path}: {asker} needs steering.cma_es results for {trait}; "
                          "materialize `cma_es` first")


def vectors_for_method(src: ReadContext, trait: str, method: str) -> "VectorSet":
    """The vectors holding `method` for a trait: the CMA-ES refinement for `cma_es`, else the extracted ones."""
    if method == CMA_ES:
        refined = refined_vectors(src, trait)
        if refined is None:
            raise _no_refinement(src, trait, "method cma_es")
        return refined[1]
    return load_vectors(src, trait, src.experiment.extraction_variant)


def monitored_vector(ctx: ReadContext, trait: str) -> tuple[str, str, str, int]:
    """(position, component, method, best layer) of the vector a trait is monitored with."""
    spec = ctx.experiment.spec
    src = vectors_context(ctx, "inference")
    positions = src.experiment.extraction_for(trait).positions
    position = spec.inference.position or positions[0]
    if position not in positions:
        raise TraitflowError(f"{ctx.experiment.path}: inference.position {position!r} is not among extraction.position")
    evaluation = src.artifacts.read(ExtractionEval, trait, src.experiment.extraction_variant)
    rows = [r for r in evaluation["scores"] if r["position"] == position]
    if spec.inference.method == CMA_ES:
        refined = refined_vectors(src, trait)
        if refined is None:
            raise _no_refinement(src, trait, "inference.method cma_es")
        # The refinement's own key: it was made at the steering position, with one component.
        made_at, component, _ = next(iter(refined[1].vectors))  # its one (position, component, cma_es)
        if made_at != position:
            raise TraitflowError(f"{ctx.experiment.path}: inference.method cma_es monitors {trait} with its CMA-ES "
                                 f"refinement, made at the steering position {made_at!r}; set inference.position to {made_at!r}")
        return position, component, CMA_ES, refined[1].layers[0]
    if spec.inference.method:
        rows = [r for r in rows if r["method"] == spec.inference.method]
        if not rows:
            raise TraitflowError(f"{ctx.experiment.path}: inference.method {spec.inference.method!r} was not extracted")
    from traitflow.extract.evaluate import VectorScore, best_score

    best = best_score([VectorScore.from_dict(r) for r in rows])
    return position, best.component, best.method, best.layer


def comparison_vector(ctx: ReadContext, trait: str) -> tuple[str, str, str]:
    """The vectors a comparison measures with: the steering position (the upcoming choice, not the
    tokens already emitted — DESIGN §9) and its best extracted method, at every layer."""
    src = vectors_context(ctx, "inference")
    position = ctx.experiment.spec.steering.position or src.experiment.extraction_for(trait).positions[0]
    best = src.artifacts.read(ExtractionEval, trait, src.experiment.extraction_variant)["best"]
    row = best.get(position) or next(iter(best.values()))
    return row["position"], row["component"], row["method"]


@dataclass(frozen=True)
class SteeringChoice:
    """The vector a trait steers with, from its `best_vector` (:func:`best_steering_vector`)."""

    vector: Any  # [hidden] tensor
    position: str
    component: str
    method: str
    layer: int
    coefficient: float | None  # best_vector's, when steering chose it; None when chosen by accuracy alone
    description: str  # e.g. "best vector: prompt[-1] residual pca, layer 2"


def best_steering_vector(ctx: ReadContext, trait: str, stage: str = "steering", layer: int | None = None) -> SteeringChoice | None:
    """A trait's best vector (its `best_vector` artifact: position, component, method, layer; a
    CMA-ES refinement read from this experiment's `cma_es`), at `layer` when given (same position,
    component and method). None when `best_vector` is not materialized. Vectors come from `stage`'s
    `vectors_from` source."""
    from traitflow.artifacts import BestVector

    best = ctx.artifacts.read_optional(BestVector, trait)
    if best is None:
        return None
    src = vectors_context(ctx, stage)
    vectors = load_vectors(src, trait, src.experiment.extraction_variant)
    if best["method"] == CMA_ES and best.get("variant"):
        # A refinement: this experiment's own, of the variant it names.
        if not CmaEs.exists(ctx.store, ctx.experiment.name, trait, best["variant"]):
            raise _no_refinement(ctx, trait, "best_vector")
        vectors = CmaEs.read_vectors(ctx.store, ctx.experiment.name, trait, best["variant"])
    key = (best["position"], best["component"], best["method"])
    at = int(best["layer"]) if layer is None else int(layer)
    if key not in vectors.vectors or at not in vectors.defined_layers(*key):
        where = f"layer {at}" if layer is not None else f"its layer {at}"
        raise TraitflowError(f"{trait}: best_vector's {' '.join(key)} has no vector at {where} "
                             f"(defined at {', '.join(map(str, vectors.defined_layers(*key))) or 'none'})")
    return SteeringChoice(vectors.vector(*key, at), *key, at, best.get("coefficient"),
                          f"best vector: {' '.join(key)}, layer {at}")
