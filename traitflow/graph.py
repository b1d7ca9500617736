"""The asset graph of one experiment, written down once.

Each row names an asset, the `traitflow run` stage it belongs to, how it is partitioned, the
assets it reads, the spec fields that change its result (`reads`, which enter its code version),
the spec fields it only uses to run (`settings`: batch sizes, concurrency, timeouts — they never
mark anything stale), its artifact file, its Dagster kinds and asset checks, and whether it runs on
the model (the `gpu` pool).

Derived from this table: the Dagster asset factories in `assets/` (keys, deps, kinds, checks,
pools, descriptions, code versions), the chained code versions in
:meth:`traitflow.specs.loader.Experiment.code_version`, the stages of `traitflow run`, and the
artifact classes of :mod:`traitflow.artifacts` (file name and partition folders).
`tests/test_graph.py` checks that the factories build exactly these edges and that editing any
spec field changes the code version of exactly the assets that read it and their descendants.

This module imports nothing heavy (no Dagster, no torch).
"""

from dataclasses import dataclass

__all__ = ["ASSETS", "BLOCKING_CHECKS", "EXTRACTION_ASSETS", "STAGES", "AssetRow", "descendants", "row"]

# How an asset is partitioned:
#   trait_variant    trait × the extraction variant
#   trait_steered    trait × each steered variant
#   trait            one per trait
#   variant          one per variant
#   prompt_variant   prompt set × inference variant
#   prompt_generating prompt set × inference variant with responses of its own (generated or imported)
#   prompt_replay    prompt set × inference variant that replays another's tokens (`inference.replay`)
#   comparison       one per comparison
#   benchmark        one per benchmark × its variants (`<name>/<variant>`)
#   experiment       one per experiment (unpartitioned): reads every partition of its upstream assets


@dataclass(frozen=True)
class AssetRow:
    name: str
    stage: str
    partitions: str
    upstream: tuple[str, ...]
    reads: tuple[str, ...]
    artifact: str
    kinds: tuple[str, ...]
    description: str
    settings: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()  # checks whose failure stops that partition's trait chain
    gpu: bool = False
    reads_model: bool = False  # depends on its variants' `models` source (spec + weights, per variant)
    vector_stage: str | None = None  # reads vectors: follows `<vector_stage>.vectors_from`
    opt_in: str | None = None  # built only when this spec field is set (true, non-empty)


ASSETS: tuple[AssetRow, ...] = (
    AssetRow("responses", "generation", "trait_variant", (), ("extraction.max_new_tokens",), "responses.json",
             ("pytorch", "json"), "Greedy replies to each trait's positive and negative scenarios, with the exact token ids.",
             settings=("extraction.batch_size",), gpu=True, reads_model=True),
    AssetRow("vetting", "generation", "trait_variant", ("responses",), ("judge.model", "judge.api_base", "judges",
             "extraction.vetting", "extraction.position"), "vetting.json", ("json",),
             "Judge scores of each reply's first 16 words; which replies express their pole.",
             settings=("judge.max_concurrency", "judge.timeout_s", "judge.max_retries", "judge.backoff_s",
                       "judge.max_failure_rate", "judge.deadline_s"), checks=("min_per_side",), blocking=("min_per_side",)),
    AssetRow("activations", "extraction", "trait_variant", ("responses", "vetting"),
             ("extraction.position", "extraction.component", "extraction.layers", "extraction.vetting.enabled"),
             "activations.safetensors",
             ("pytorch", "safetensors"), "Activations pooled over each position window, all layers, one batched forward pass.",
             settings=("extraction.batch_size",), gpu=True),
    AssetRow("vectors", "extraction", "trait_variant", ("activations",),
             ("extraction.methods", "extraction.val_split", "extraction.seed", "extraction.clean_massive_dims"),
             "vectors.safetensors", ("pytorch", "safetensors"), "Unit trait vectors per position × component × method × layer."),
    AssetRow("extraction_eval", "extraction", "trait_variant", ("activations", "vectors"), ("extraction.min_val_accuracy",),
             "extraction_eval.json", ("json", "altair"),
             "Held-out accuracy, AUROC, Cohen's d and polarity per method × layer; the best vector.",
             checks=("polarity", "min_val_accuracy")),
    AssetRow("logit_lens", "extraction", "trait_variant", ("vectors", "extraction_eval"), ("logit_lens",),
             "logit_lens.json", ("pytorch", "json"),
             "Top and bottom tokens of each layer's best vector after the final norm and unembedding.", gpu=True),
    AssetRow("steering", "steering", "trait_steered", ("vectors", "extraction_eval"),
             ("steering.layers", "steering.position", "steering.method", "steering.search.steps", "steering.search.questions",
              "steering.search.max_new_tokens", "steering.search.coherence_target", "steering.search.min_coherence",
              "steering.search.start", "steering.search.up", "steering.search.down", "steering.system_prompt",
              "steering.strip_prefix", "steering.coefficients", "steering.vectors_from", "judge.model", "judge.api_base",
              "judges", "extraction.position"), "summary.json", ("pytorch", "json", "altair"),
             "Unsteered baseline and an adaptive coefficient search per layer, judged for trait and coherence.",
             settings=("steering.search.batch_size", "judge.max_concurrency", "judge.timeout_s", "judge.max_retries",
                       "judge.backoff_s", "judge.max_failure_rate", "judge.deadline_s"),
             gpu=True, reads_model=True, vector_stage="steering"),
    AssetRow("cma_es", "steering", "trait_steered", ("steering",),
             ("steering.cma_es.generations", "steering.cma_es.subspace_dim", "steering.cma_es.sigma0",
              "steering.cma_es.popsize", "steering.cma_es.seed"), "cma_es.json", ("pytorch", "safetensors"),
             "CMA-ES over the direction (in a random subspace around it) and the coefficient of the best run.",
             gpu=True, vector_stage="steering", opt_in="steering.cma_es.enabled"),
    AssetRow("best_vector", "selection", "trait", ("steering", "cma_es", "extraction_eval"),
             ("steering.min_delta", "steering.cma_es.enabled", "extraction.position"), "best_vector.json", ("json",),
             "The vector to use for this trait: the best valid steering run, else the best held-out accuracy.",
             checks=("min_delta",), vector_stage="steering"),
    AssetRow("calibration", "calibration", "variant", (), (), "calibration.json", ("pytorch", "json"),
             "Massive activation dims and mean norms per layer and component, on traitflow's neutral prompts.",
             settings=("inference.batch_size",), gpu=True, reads_model=True),
    AssetRow("inference_responses", "inference", "prompt_generating", (),
             ("inference.max_new_tokens", "inference.sample", "inference.import_responses"), "responses.json",
             ("pytorch", "json"), "Each variant's replies to the prompt set (generated or imported), with exact token ids.",
             settings=("inference.batch_size",), gpu=True, reads_model=True),
    AssetRow("replayed_responses", "inference", "prompt_replay", ("inference_responses",), ("inference.replay",),
             "responses.json", ("pytorch", "json"),
             "Another variant's exact token ids run through this variant (`inference.replay`): the same tokens, this model.",
             settings=("inference.batch_size",), gpu=True, reads_model=True, opt_in="inference.replay"),
    AssetRow("inference_activations", "inference", "prompt_variant", ("inference_responses", "replayed_responses"),
             ("inference.save_layers",), "activations.safetensors", ("pytorch", "safetensors"),
             "Every token's residual activations at `inference.save_layers` (float16, large): projections without the model.",
             settings=("inference.batch_size",), gpu=True, reads_model=True, opt_in="inference.save_activations"),
    AssetRow("projections", "inference", "prompt_variant",
             # cma_es: `inference.method: cma_es` monitors with the refinement (an edge whenever it is built);
             # inference_activations: projected from them, without the model, when they cover the layers (ditto)
             ("inference_responses", "replayed_responses", "inference_activations", "vectors", "extraction_eval",
              "calibration", "cma_es"),
             ("inference.layers", "inference.position", "inference.method", "inference.score", "inference.centre",
              "inference.clean_massive_dims", "inference.response_only", "inference.vectors_from", "extraction.position"),
             "projections.json",
             ("pytorch", "json", "altair"), "Per-token projections (h·v̂ and ‖h‖) of every response onto every trait's vector.",
             settings=("inference.batch_size",), gpu=True, vector_stage="inference"),
    AssetRow("variant_diff", "comparison", "comparison", ("inference_responses", "replayed_responses", "vectors", "extraction_eval"),
             ("comparisons", "steering.position", "inference.vectors_from", "extraction.position"), "variant_diff.json",
             ("pytorch", "json", "altair"),
             "A's responses replayed through A and B: Cohen's d, cosine and per-token/clause deltas per trait x layer.",
             settings=("inference.batch_size",), gpu=True, reads_model=True, vector_stage="inference"),
    AssetRow("benchmark", "benchmark", "benchmark", ("best_vector",), ("benchmarks",), "benchmark.json",
             ("pytorch", "json", "altair"),
             "Capability under each condition (baseline, steered, ablated): accuracy ± bootstrap CI, or next-token CE and KL.",
             settings=("inference.batch_size",), gpu=True, reads_model=True, vector_stage="steering", opt_in="benchmarks"),
    # Last, in a stage of its own: `traitflow run` builds it after everything it summarises. It
    # reads extraction.position for a trait not steered yet (the extraction's best at the first one).
    AssetRow("summary", "summary", "experiment", ("best_vector", "extraction_eval", "variant_diff"), ("extraction.position",),
             "summary.json", ("json",),
             "One row per trait: its best vector, held-out accuracy, steering delta and coherence (the viewer's experiment page)."),
)

_BY_NAME = {r.name: r for r in ASSETS}
BLOCKING_CHECKS = frozenset((r.name, check) for r in ASSETS for check in r.blocking)
EXTRACTION_ASSETS = tuple(r.name for r in ASSETS if r.partitions == "trait_variant")
# `traitflow run` stages, in order, each with its assets in table order.
STAGES: dict[str, list[str]] = {}
for _row in ASSETS:
    STAGES.setdefault(_row.stage, []).append(_row.name)


def row(name: str) -> AssetRow:
    return _BY_NAME[name]


def descendants(name: str) -> set[str]:
    """Every asset downstream of `name` (not itself)."""
    out: set[str] = set()
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for r in ASSETS:
            if current in r.upstream and r.name not in out:
                out.add(r.name)
                frontier.append(r.name)
    return out
