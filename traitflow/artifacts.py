"""Every artifact of an experiment, one class each: where it lives, what is in it, how to read and write it.

Where is artifact X defined, who writes it, who reads it?

| class | asset | file | written by | read by |
|---|---|---|---|---|
| :class:`Responses` | `responses` | `responses.json` | `stages.extraction.run_responses` | vetting, activations |
| :class:`Vetting` | `vetting` | `vetting.json` | `stages.extraction.run_vetting` | activations |
| :class:`Activations` | `activations` | `activations.safetensors` | `stages.extraction.run_activations` | vectors, extraction_eval |
| :class:`Vectors` | `vectors` | `vectors.safetensors` | `stages.extraction.run_vectors` | `stages.which_vector.load_vectors` (every consumer), export |
| :class:`ExtractionEval` | `extraction_eval` | `extraction_eval.json` | `stages.extraction.run_extraction_eval` | logit_lens, steering, best_vector, projections, variant_diff, report, export, monitor |
| :class:`LogitLens` | `logit_lens` | `logit_lens.json` | `stages.extraction.run_logit_lens` | (people) |
| :class:`Steering` | `steering` | `summary.json` (+ `results.jsonl`) | `steer.run.run_steering` via `stages.steering.run_steering_stage` | cma_es, best_vector, report |
| :class:`CmaEs` | `cma_es` | `cma_es.json` (+ refined `vectors.safetensors`) | `stages.steering.run_cma_es` | best_vector; `inference.method: cma_es` (projections, monitor); export `--method cma_es` |
| :class:`BestVector` | `best_vector` | `best_vector.json` | `stages.steering.run_best_vector` | report, monitor `--steer` |
| :class:`Calibration` | `calibration` | `calibration.json` | `stages.inference.run_calibration` | projections (normalized score, clean_massive_dims) |
| :class:`InferenceResponses` | `inference_responses` | `responses.json` | `stages.inference.run_inference_responses` | projections, variant_diff, replayed_responses |
| :class:`ReplayedResponses` | `replayed_responses` | `responses.json` | `stages.inference.run_replayed_responses` | projections, variant_diff |
| :class:`InferenceActivations` | `inference_activations` | `activations.safetensors` | `stages.inference.run_inference_activations` | projections (without the model) |
| :class:`Projections` | `projections` | `projections.json` | `stages.inference.run_projections` | report (existence), charts |
| :class:`Benchmark` | `benchmark` | `benchmark.json` | `stages.capability.run_benchmark` | report, viewer |
| :class:`VariantDiff` | `variant_diff` | `variant_diff.json` | `stages.comparison.run_variant_diff` | report |
| :class:`Summary` | `summary` | `summary.json` | `stages.summary.run_summary` (rows: `view.data.experiment_rows`) | (people, tools) |

The asset name, file name and partitioning of each class come from its row of the asset table
(:mod:`traitflow.graph`), which stays the one place that names them. A partition key becomes
folders: a trait `toy/optimism` of variant `chat` is `toy/optimism/chat`
(`<storage>/<experiment>/<asset>/<partition…>/<file>`, see docs/artifacts.md).

JSON records are ``TypedDict``s: plain dicts at run time, so the files on disk are exactly the JSON
users and tools read; the classes only document the top-level fields (tests/test_docs.py checks
that docs/artifacts.md lists each). Every JSON artifact carries ``"schema_version"``
(:data:`SCHEMA_VERSION`, set by ``write``); ``read`` takes files without one (written before it
existed) and refuses, in one line naming the file, a version newer than this code knows.
Tensor artifacts read into :class:`~traitflow.extract.vectors.VectorSet` and
:class:`~traitflow.extract.capture.ActivationSet`. Every write is atomic (the store's).

Use it through a handle bound to one experiment's storage::

    arts = Artifacts(store, "demo")
    if arts.exists(ExtractionEval, "toy/optimism", "chat"):
        best = arts.read(ExtractionEval, "toy/optimism", "chat")["best"]

or the class methods directly (``ExtractionEval.read(store, "demo", "toy/optimism", "chat")``).
This module imports nothing heavy: torch only when a tensor artifact is read or written.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NotRequired, TypedDict, TypeVar

from traitflow.errors import TraitflowError
from traitflow.graph import row
from traitflow.store import ArtifactStore

if TYPE_CHECKING:
    from traitflow.extract.capture import ActivationSet
    from traitflow.extract.vectors import VectorSet
    from traitflow.monitor.projections import SavedActivations

__all__ = [
    "ARTIFACTS", "SCHEMA_VERSION", "Activations", "Artifact", "Artifacts", "Benchmark", "BestVector", "TensorArtifact", "Calibration", "CmaEs",
    "ExtractionEval", "InferenceActivations", "InferenceResponses", "JsonArtifact", "LogitLens", "Projections", "ReplayedResponses", "Responses",
    "Steering", "Summary", "responses_artifact",
    "VariantDiff", "Vectors", "Vetting", "check_schema_version",
]

# The version of the JSON records' layout. Raise it when a field changes meaning or goes away (not
# when one is added: readers ignore fields they do not know), and teach `read` the old layout.
SCHEMA_VERSION = 1

T = TypeVar("T")


def _split(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


# Partition key -> folders, per partitioning kind of the asset table (traitflow.graph).
PARTITION_RULES: dict[str, Callable[..., tuple[str, ...]]] = {
    "trait_variant": lambda trait, variant: (*_split(trait), variant),
    "trait_steered": lambda trait, variant: (*_split(trait), variant),
    "trait": lambda trait: _split(trait),
    "variant": lambda variant: (variant,),
    "prompt_variant": lambda prompt_set, variant: (*_split(prompt_set), variant),
    "prompt_generating": lambda prompt_set, variant: (*_split(prompt_set), variant),
    "prompt_replay": lambda prompt_set, variant: (*_split(prompt_set), variant),
    "comparison": lambda comparison: _split(comparison),
    "benchmark": lambda benchmark: _split(benchmark),  # `<name>/<variant>`
    "experiment": lambda: (),  # unpartitioned: `<storage>/<experiment>/<asset>/<file>`
}


def check_schema_version(record: Any, path: Path) -> Any:
    """`record` unchanged when this code can read it; a one-line error naming `path` when it was
    written by a newer traitflow. A record without ``schema_version`` predates it: version 1."""
    version = record.get("schema_version", 1) if isinstance(record, dict) else 1
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TraitflowError(f"{path}: schema_version {version!r} is newer than this traitflow reads ({SCHEMA_VERSION}); "
                             "upgrade traitflow, or re-materialize the asset")
    return record


class Artifact(Generic[T]):
    """One asset's artifact file. Subclasses name the asset; file and partitioning come from its table row."""

    asset: ClassVar[str]
    file: ClassVar[str]  # from the asset table
    partitions: ClassVar[str]  # the asset table's partitioning kind

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "asset" in cls.__dict__:  # a concrete artifact (not an intermediate base class)
            spec = row(cls.asset)
            cls.file, cls.partitions = spec.artifact, spec.partitions

    @classmethod
    def partition(cls, *key: str) -> tuple[str, ...]:
        """The partition folders of a key: `("toy/optimism", "chat")` -> `("toy", "optimism", "chat")`."""
        return PARTITION_RULES[cls.partitions](*key)

    @classmethod
    def path(cls, store: ArtifactStore, experiment: str, *key: str) -> Path:
        return store.path(experiment, cls.asset, cls.partition(*key), cls.file)

    @classmethod
    def folder(cls, store: ArtifactStore, experiment: str, *key: str) -> Path:
        """The partition's folder (charts and side files live beside the artifact)."""
        return cls.path(store, experiment, *key).parent

    @classmethod
    def exists(cls, store: ArtifactStore, experiment: str, *key: str) -> bool:
        return store.exists(cls.path(store, experiment, *key))

    @classmethod
    def read(cls, store: ArtifactStore, experiment: str, *key: str) -> T:
        """The artifact; a one-line TraitflowError naming the file when it is missing."""
        return cls.load(store, cls.path(store, experiment, *key))

    @classmethod
    def read_optional(cls, store: ArtifactStore, experiment: str, *key: str) -> T | None:
        path = cls.path(store, experiment, *key)
        return cls.load(store, path) if store.exists(path) else None

    @classmethod
    def write(cls, store: ArtifactStore, experiment: str, value: T, *key: str) -> Path:
        path = cls.path(store, experiment, *key)
        cls.save(store, path, value)
        return path

    # the format: subclasses ---------------------------------------------------------------
    @classmethod
    def load(cls, store: ArtifactStore, path: Path) -> T:
        raise NotImplementedError

    @classmethod
    def save(cls, store: ArtifactStore, path: Path, value: T) -> None:
        raise NotImplementedError


class TensorArtifact(Artifact[T]):
    """A safetensors artifact whose value class reads itself from tensors and metadata
    (``from_tensors``) and writes itself back (``to_tensors``); ``value_type`` imports it (torch)
    only when the artifact is read or written."""

    @classmethod
    def value_type(cls) -> Any:
        raise NotImplementedError

    @classmethod
    def load(cls, store: ArtifactStore, path: Path) -> T:
        return cls.value_type().from_tensors(*store.read_tensors(path))

    @classmethod
    def save(cls, store: ArtifactStore, path: Path, value: T) -> None:
        store.write_tensors(path, *value.to_tensors())  # type: ignore[attr-defined]


class JsonArtifact(Artifact[T]):
    """A strict-JSON record (see traitflow.store.atomic), stamped with :data:`SCHEMA_VERSION`."""

    schema: ClassVar[type]  # the TypedDict of its top-level fields

    @classmethod
    def load(cls, store: ArtifactStore, path: Path) -> T:
        return check_schema_version(store.read_json(path), path)

    @classmethod
    def save(cls, store: ArtifactStore, path: Path, value: T) -> None:
        store.write_json(path, {"schema_version": SCHEMA_VERSION, **value})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- record schemas
# Top-level fields only (docs/artifacts.md describes what is inside them). `Any` where the value
# is a nested structure documented there.

class ResponsesRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    variant: str
    model: dict[str, Any]
    paired: bool
    max_new_tokens: int
    chat_template: Any
    input_hashes: dict[str, str]
    items: list[dict[str, Any]]  # {side, index, prompt, system_prompt, prompt_ids, response_ids, response}


class VettingRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    variant: str
    enabled: bool
    judge: Any
    judge_endpoint: Any
    thresholds: dict[str, Any]
    paired_filter: Any
    estimated_window: Any
    adaptive_positions: dict[str, str]
    items: list[dict[str, Any]]  # {side, index, score, mass, passed}
    summary: dict[str, Any]  # {passed_positive, passed_negative, total, none, none_rate, mean_score_*}


class ExtractionEvalRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    variant: str
    tie_break: str
    best: dict[str, dict[str, Any]]  # position -> score row
    scores: list[dict[str, Any]]  # {position, component, method, layer, val_accuracy, auroc, cohens_d, polarity, ...}


class LogitLensRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    variant: str
    lenses: list[dict[str, Any]]


class SteeringSummary(TypedDict):
    schema_version: NotRequired[int]
    baseline: dict[str, Any]
    best: dict[str, Any] | None
    best_per_layer: list[dict[str, Any]]
    runs: int
    min_coherence: float
    search: NotRequired[dict[str, Any]]


class CmaEsRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    variant: str
    method: str
    position: str
    component: str
    layer: int
    start: dict[str, Any]
    baseline: float
    delta: float | None
    x: list[float]
    coefficient: float
    fitness: float
    start_fitness: float
    trait_mean: float | None
    coherence_mean: float | None
    feasible: bool
    cosine_to_init: float
    evaluations: int
    history: list[dict[str, Any]]


class BestVectorRecord(TypedDict):
    schema_version: NotRequired[int]
    trait: str
    rule: str
    variant: str | None
    source_variant: str
    position: str
    component: str
    method: str
    layer: int
    multiplier: float | None
    coefficient: float | None
    baseline: float | None
    trait_mean: float | None
    coherence_mean: float | None
    delta: float | None
    vector_file: NotRequired[str]  # a CMA-ES refinement: its vectors.safetensors
    val_accuracy: NotRequired[float]  # chosen by extraction_eval


class CalibrationRecord(TypedDict):
    schema_version: NotRequired[int]
    variant: str
    layers: list[int]
    n_tokens: int
    top_k: int
    min_layers: int
    massive: list[dict[str, Any]]
    recurring_dims: list[int]
    components: dict[str, dict[str, Any]]


class InferenceResponsesRecord(TypedDict):
    schema_version: NotRequired[int]
    prompt_set: str
    variant: str
    model: dict[str, Any]
    mode: str  # greedy | sample | replay | import
    max_new_tokens: NotRequired[int]
    replayed_from: NotRequired[str]  # mode replay: the variant whose token ids these are
    tokenized_from_text: NotRequired[bool]  # mode import: the file had text only
    imported_from: NotRequired[str]  # mode import: the file's path
    input_hashes: dict[str, str]
    items: list[dict[str, Any]]  # {id, prompt, system_prompt, prompt_ids, response_ids, response}


class ProjectionsRecord(TypedDict):
    schema_version: NotRequired[int]
    prompt_set: str
    variant: str
    layers: Any
    mode: str
    centred: Any
    cleaned: Any
    response_only: bool
    skipped_traits: list[str]
    computed_from: str  # model | saved_activations
    traits: dict[str, dict[str, Any]]
    items: list[dict[str, Any]]


class VariantDiffRecord(TypedDict):
    schema_version: NotRequired[int]
    a: str
    b: str
    prompt_set: str
    n_prompts: int
    sign: str
    top_pct: float
    traits: dict[str, dict[str, Any]]
    vectors: dict[str, dict[str, str]]


class BenchmarkRecord(TypedDict):
    schema_version: NotRequired[int]
    benchmark: str
    variant: str
    source: str
    chat_template: bool
    n: int
    conditions: dict[str, dict[str, Any]]  # name -> {accuracy, ci95, delta, delta_ci95, n, ce, kl, tokens, detail}
    predictions: list[dict[str, Any]]  # per item: {id, label, pred: {condition: index}, logprobs: {condition: [...]}}


# What a condition reports, wherever benchmarks are shown (report --json, the viewer): accuracy with its
# 95 % interval and the paired change from the baseline for multiple choice; CE and KL for ce_loss.
BENCHMARK_CONDITION_FIELDS = ("accuracy", "ci95", "delta", "delta_ci95", "n", "ce", "kl")


class SummaryRecord(TypedDict):
    schema_version: NotRequired[int]
    experiment: str
    traits: list[dict[str, Any]]  # traitflow.view.data.experiment_rows: one row per trait


# --------------------------------------------------------------------------- the artifacts
class Responses(JsonArtifact[ResponsesRecord]):
    """Greedy replies to a trait's scenarios, with exact token ids. Partition: trait × extraction variant."""

    asset = "responses"
    schema = ResponsesRecord


class Vetting(JsonArtifact[VettingRecord]):
    """Judge scores of each reply; which ones express their pole. Partition: trait × extraction variant."""

    asset = "vetting"
    schema = VettingRecord


class Activations(TensorArtifact["ActivationSet"]):
    """Pooled activations per position window (safetensors). Partition: trait × extraction variant."""

    asset = "activations"

    @classmethod
    def value_type(cls) -> "type[ActivationSet]":
        from traitflow.extract.capture import ActivationSet

        return ActivationSet


class Vectors(TensorArtifact["VectorSet"]):
    """Unit trait vectors per position × component × method × layer (safetensors). Partition: trait × extraction variant."""

    asset = "vectors"

    @classmethod
    def value_type(cls) -> "type[VectorSet]":
        from traitflow.extract.vectors import VectorSet

        return VectorSet


class ExtractionEval(JsonArtifact[ExtractionEvalRecord]):
    """Held-out scores per method × layer and the best vector per position. Partition: trait × extraction variant."""

    asset = "extraction_eval"
    schema = ExtractionEvalRecord


class LogitLens(JsonArtifact[LogitLensRecord]):
    """Top and bottom tokens of each layer's best vector. Partition: trait × extraction variant."""

    asset = "logit_lens"
    schema = LogitLensRecord


class Steering(JsonArtifact[SteeringSummary]):
    """A finished steering search: `summary.json`, written last by :func:`traitflow.steer.run.write_summary`
    (so its presence means the search finished), beside trait-interp's `results.jsonl` log and the
    stored answers `responses/<config>.json`. Partition: trait × steered variant."""

    asset = "steering"
    schema = SteeringSummary
    RESULTS_LOG: ClassVar[str] = "results.jsonl"

    @classmethod
    def results_log(cls, store: ArtifactStore, experiment: str, trait: str, variant: str) -> Path:
        return cls.folder(store, experiment, trait, variant) / cls.RESULTS_LOG

    @staticmethod
    def run_name(layer: int | None, multiplier: float | None) -> str:
        """A run's name: its answers are `responses/<name>.json` (``baseline``, or ``L2_m0.8000``)."""
        return "baseline" if layer is None else f"L{layer}_m{multiplier:.4f}"


class CmaEs(JsonArtifact[CmaEsRecord]):
    """A CMA-ES refinement of the best steering run: `cma_es.json`, and the refined unit vector (method
    `cma_es`, at its one layer) in `vectors.safetensors` beside it. Partition: trait × steered variant.

    It is not part of the extracted vectors (:class:`Vectors`): whoever wants it asks for it by name
    (best_vector, `inference.method: cma_es`, export `--method cma_es`)."""

    asset = "cma_es"
    schema = CmaEsRecord
    VECTOR_FILE: ClassVar[str] = "vectors.safetensors"

    @classmethod
    def vector_path(cls, store: ArtifactStore, experiment: str, trait: str, variant: str) -> Path:
        return cls.folder(store, experiment, trait, variant) / cls.VECTOR_FILE

    @classmethod
    def relative_vector_path(cls, trait: str, variant: str) -> str:
        """The refined vector's file relative to the experiment folder (best_vector's `vector_file`)."""
        return "/".join((cls.asset, *cls.partition(trait, variant), cls.VECTOR_FILE))

    @classmethod
    def write_vector(cls, store: ArtifactStore, experiment: str, vector: Any, trait: str, variant: str, *,
                     position: str, component: str, layer: int, metadata: dict[str, Any]) -> Path:
        """The refined `[hidden]` vector as `vector/<position>/<component>/cma_es`, shape `[1, hidden]`."""
        from traitflow.steer.cma import METHOD

        path = cls.vector_path(store, experiment, trait, variant)
        store.write_tensors(path, {f"vector/{position}/{component}/{METHOD}": vector[None]},
                            {**metadata, "layers": [layer], "method": METHOD})
        return path

    @classmethod
    def read_vectors(cls, store: ArtifactStore, experiment: str, trait: str, variant: str) -> "VectorSet":
        """The refined vector as a one-layer VectorSet (method `cma_es`); its baseline and training
        accuracy are undefined (NaN): CMA-ES optimises steering, not a class boundary."""
        import torch

        from traitflow.extract.vectors import VectorSet

        vectors = VectorSet.from_tensors(*store.read_tensors(cls.vector_path(store, experiment, trait, variant)))
        for key in vectors.vectors:
            vectors.baselines[key] = torch.full((len(vectors.layers),), float("nan"))
            vectors.train_accuracy[key] = torch.full((len(vectors.layers),), float("nan"))
        return vectors


class BestVector(JsonArtifact[BestVectorRecord]):
    """The vector to use for a trait and the rule that chose it. Partition: trait."""

    asset = "best_vector"
    schema = BestVectorRecord


class Calibration(JsonArtifact[CalibrationRecord]):
    """Massive activation dims and mean norms per layer, on neutral prompts. Partition: variant."""

    asset = "calibration"
    schema = CalibrationRecord


class InferenceResponses(JsonArtifact[InferenceResponsesRecord]):
    """A variant's replies to a prompt set, with exact token ids. Partition: prompt set × variant."""

    asset = "inference_responses"
    schema = InferenceResponsesRecord


class ReplayedResponses(JsonArtifact[InferenceResponsesRecord]):
    """Another variant's replies, its exact token ids run through this variant (mode `replay`).
    Partition: prompt set × replaying variant."""

    asset = "replayed_responses"
    schema = InferenceResponsesRecord


class InferenceActivations(TensorArtifact["SavedActivations"]):
    """Every response token's residual activations at `inference.save_layers`, float16 (safetensors):
    `layer/<L>` `[total tokens, hidden]` and `offsets` `[n_items + 1]`. Partition: prompt set × variant.

    Large (tokens × layers × hidden × 2 bytes), so on a local store :meth:`read_metadata` reads
    the header only and :meth:`read_layers` only the layers asked for (an s3:// store downloads the
    file into its mirror first)."""

    asset = "inference_activations"

    @classmethod
    def value_type(cls) -> "type[SavedActivations]":
        from traitflow.monitor.projections import SavedActivations

        return SavedActivations

    @classmethod
    def _local(cls, store: ArtifactStore, experiment: str, *key: str) -> Path | None:
        """The file on this machine (an s3:// store's mirror fetches it first), or None when there is none."""
        path = cls.path(store, experiment, *key)
        fetch = getattr(store, "fetch", None)
        present = fetch(path) if fetch is not None else path.exists()
        return path if present else None

    @staticmethod
    def _metadata(handle: Any) -> dict[str, Any]:
        import json

        out: dict[str, Any] = {}
        for name, value in (handle.metadata() or {}).items():
            try:
                out[name] = json.loads(value)
            except json.JSONDecodeError:
                out[name] = value
        return out

    @classmethod
    def read_metadata(cls, store: ArtifactStore, experiment: str, *key: str) -> dict[str, Any] | None:
        """The metadata (layers, ids, tokens, model, input_hashes, …), without a tensor; None when not saved."""
        from safetensors import safe_open

        path = cls._local(store, experiment, *key)
        if path is None:
            return None
        with safe_open(str(path), framework="pt") as handle:
            return cls._metadata(handle)

    @classmethod
    def read_layers(cls, store: ArtifactStore, experiment: str, layers: list[int], *key: str) -> "SavedActivations":
        """The saved activations with only `layers` in memory (and the metadata)."""
        from safetensors import safe_open

        from traitflow.monitor.projections import SavedActivations

        path = cls._local(store, experiment, *key)
        if path is None:
            raise TraitflowError(f"{cls.path(store, experiment, *key)}: artifact missing; materialize inference_activations first")
        with safe_open(str(path), framework="pt") as handle:
            meta = cls._metadata(handle)
            tensors = {f"layer/{layer}": handle.get_tensor(f"layer/{layer}") for layer in layers}
            tensors["offsets"] = handle.get_tensor("offsets")
        return SavedActivations.from_tensors(tensors, meta)


def responses_artifact(spec_replay: dict[str, str], variant: str) -> "type[InferenceResponses] | type[ReplayedResponses]":
    """Where a variant's responses to a prompt set are: replayed (`inference.replay`) or its own."""
    return ReplayedResponses if variant in spec_replay else InferenceResponses


class Projections(JsonArtifact[ProjectionsRecord]):
    """Per-token projections of every response onto every trait's vector. Partition: prompt set × variant."""

    asset = "projections"
    schema = ProjectionsRecord


class VariantDiff(JsonArtifact[VariantDiffRecord]):
    """How far variant B moves along each trait on A's tokens. Partition: comparison (`<a>_vs_<b>/<prompt set>`)."""

    asset = "variant_diff"
    schema = VariantDiffRecord


class Benchmark(JsonArtifact[BenchmarkRecord]):
    """A capability benchmark of one variant under every condition of its spec (`benchmarks:`).
    Partition: `<benchmark>/<variant>`."""

    asset = "benchmark"
    schema = BenchmarkRecord


class Summary(JsonArtifact[SummaryRecord]):
    """Every trait's best vector, held-out score and steering result in one table (the rows of
    :func:`traitflow.view.data.experiment_rows`). One per experiment: `<storage>/<experiment>/summary/summary.json`."""

    asset = "summary"
    schema = SummaryRecord


# Asset name -> its artifact class, for every row of the asset table.
ARTIFACTS: dict[str, type[Artifact]] = {cls.asset: cls for cls in (
    Responses, Vetting, Activations, Vectors, ExtractionEval, LogitLens, Steering, CmaEs, BestVector, Calibration,
    InferenceResponses, ReplayedResponses, InferenceActivations, Projections, VariantDiff, Benchmark, Summary)}


@dataclass(frozen=True)
class Artifacts:
    """The artifacts of one experiment in one store: read and write them by class and partition key.

    Read-only users (report, export, monitor) need nothing else: no model, no stage context."""

    store: ArtifactStore
    experiment: str  # the experiment's name: the first folder under the storage root

    def path(self, artifact: type[Artifact[T]], *key: str) -> Path:
        return artifact.path(self.store, self.experiment, *key)

    def folder(self, artifact: type[Artifact[T]], *key: str) -> Path:
        return artifact.folder(self.store, self.experiment, *key)

    def exists(self, artifact: type[Artifact[T]], *key: str) -> bool:
        return artifact.exists(self.store, self.experiment, *key)

    def read(self, artifact: type[Artifact[T]], *key: str) -> T:
        return artifact.read(self.store, self.experiment, *key)

    def read_optional(self, artifact: type[Artifact[T]], *key: str) -> T | None:
        return artifact.read_optional(self.store, self.experiment, *key)

    def write(self, artifact: type[Artifact[T]], value: T, *key: str) -> Path:
        return artifact.write(self.store, self.experiment, value, *key)
