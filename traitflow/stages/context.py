"""What a stage gets (StageContext), what read-only tools get (ReadContext), and what a stage returns (StageOutput)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitflow.artifacts import Artifacts
from traitflow.errors import TraitflowError
from traitflow.specs.loader import Experiment, Project
from traitflow.store import ArtifactStore, experiment_store


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
class StageOutput:
    """What one stage run on one partition returns.

    `metadata()` is the partition's Dagster metadata, flat and with the keys the asset pages have
    always shown: `path`, then `files` (e.g. `chart_html`, `results_log`), then `numbers`, then `chart`.
    `checks` are the partition's asset check outcomes (check name -> Check)."""

    path: Path  # the artifact written
    numbers: dict[str, Any] = field(default_factory=dict)  # headline numbers (str, int, float)
    files: dict[str, Path] = field(default_factory=dict)  # other files worth a link: chart_html, results_log
    chart: Markdown | None = None
    checks: dict[str, Check] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": str(self.path), **{k: str(v) for k, v in self.files.items()}, **self.numbers}
        if self.chart is not None:
            out["chart"] = self.chart
        return out


@dataclass
class ReadContext:
    """One experiment's specs and stored artifacts, read-only: what report, export and monitor use,
    and what a stage gets for another experiment's vectors (`vectors_from`). It loads no model."""

    project: Project
    experiment: Experiment
    store: ArtifactStore
    storage_override: str | None = None  # TRAITFLOW_STORAGE / --storage: replaces every experiment's storage.uri

    @classmethod
    def create(cls, project: Project, experiment: str, storage_uri: str | None = None) -> "ReadContext":
        exp = project.require(experiment)
        return cls(project, exp, experiment_store(exp.spec.storage, project.root, storage_uri), storage_uri or None)

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts(self.store, self.experiment.name)

    def for_experiment(self, other: Experiment) -> "ReadContext":
        """The same project and storage override, another experiment (its own storage.uri)."""
        store = experiment_store(other.spec.storage, self.project.root, self.storage_override)
        return ReadContext(self.project, other, store, self.storage_override)


def _no_model(variant: str) -> Any:
    raise TraitflowError(f"variant {variant}: this context reads stored artifacts only; no model is loaded here")


@dataclass(kw_only=True)
class StageContext(ReadContext):
    """What every stage needs: the project, one experiment, its store and a model loader."""

    load_model: Callable[[str], Any] = _no_model  # variant name -> LoadedModel (cached per process)
    log: Callable[[str], None] = print
    # Traits whose blocking check failed upstream (vetting left too few replies), with why: their
    # stored vectors, if any, are from before and are not used. Set from Dagster's check results.
    blocked_traits: dict[str, str] = field(default_factory=dict)
    # The model server that runs this stage's model work (traitflow.server), when one is up.
    server: Any = None

    @classmethod
    def create(cls, project: Project, experiment: str, load_model: Callable[[str], Any] | None = None,  # type: ignore[override]
               storage_uri: str | None = None, log: Callable[[str], None] = print) -> "StageContext":
        exp = project.require(experiment)
        store = experiment_store(exp.spec.storage, project.root, storage_uri)
        if load_model is None:
            from traitflow.model.loading import MODEL_CACHE

            def load_model(variant: str) -> Any:
                return MODEL_CACHE.get(exp.variants[variant], project.root)

        return cls(project, exp, store, storage_uri or None, load_model=load_model, log=log)
