"""Observable source assets for what the results depend on from outside: the user's data files
and the models, versioned per partition by content.

- `trait_datasets` (per trait) and `prompt_sets` (per prompt set): content hashes of the files;
- `models` (per variant): the variant's spec and weights (`traitflow.model.fingerprint`), so
  retraining a LoRA in place, or editing one variant's spec, marks that variant's partitions
  stale and no other's. Dagster maps a per-variant source onto a trait × variant asset only when
  the source's partitions are exactly that asset's variant dimension, so a stage whose variants
  are not all the experiment's gets its own source over its variants (`models_<stage>`: extraction,
  steering, inference, generating, replay), versioned the same way.

Observing records the current versions; when one changes, only the partitions downstream of it
show as stale. `traitflow run` observes before it materializes, and the
`<experiment>_dataset_changes` sensor observes whenever a version changed.
"""

import hashlib
import json
from pathlib import Path

import dagster as dg

from assets.automation import SENSOR_INTERVAL_S, reacts_to_changes
from traitflow.data.prompts import prompt_set_versions
from traitflow.data.traits import trait_versions
from traitflow.errors import TraitflowError
from traitflow.model.fingerprint import model_version
from traitflow.specs.loader import INFERENCE_DIR, TRAITS_DIR, Experiment, Project


def trait_source(project: Project, exp: Experiment) -> dg.SourceAsset:
    @dg.observable_source_asset(
        name="trait_datasets", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(exp.traits),
        description="Trait folders (scenarios, definition, steering questions); data version = content hash.",
    )
    def trait_datasets() -> dg.DataVersionsByPartition:
        versions = trait_versions(project.root / TRAITS_DIR, exp.traits)
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items()})

    return trait_datasets


def prompt_source(project: Project, exp: Experiment) -> dg.SourceAsset | None:
    names = list(exp.spec.inference.prompt_sets)
    if not names:
        return None

    @dg.observable_source_asset(
        name="prompt_sets", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(names),
        description="Prompt-set files; data version = content hash.",
    )
    def prompt_sets() -> dg.DataVersionsByPartition:
        versions = prompt_set_versions(project.root / INFERENCE_DIR, names)
        return dg.DataVersionsByPartition({k: dg.DataVersion(v) for k, v in versions.items()})

    return prompt_sets


class ModelSources:
    """The `models*` source assets of one experiment, made on first use."""

    def __init__(self, project: Project, exp: Experiment):
        self.project, self.exp = project, exp
        self.by_variants: dict[tuple[str, ...], dg.SourceAsset] = {}

    def _source(self, variants: list[str], stage: str) -> dg.SourceAsset:
        """The source over exactly `variants`; each call site names its own `stage`, so two different
        variant lists never get one name (the same list gets one source)."""
        key = tuple(variants)
        if key not in self.by_variants:
            project, exp = self.project, self.exp
            name = "models" if key == tuple(exp.variants) else f"models_{stage}"

            @dg.observable_source_asset(
                name=name, key_prefix=[exp.name], group_name=exp.name, partitions_def=dg.StaticPartitionsDefinition(variants),
                description="Model variants (spec and weights: local files' sizes, times and small files' contents, or "
                            "hub id + revision); data version = their hash.")
            def models() -> dg.DataVersionsByPartition:
                return dg.DataVersionsByPartition({v: dg.DataVersion(model_version(exp.variants[v], project.root))
                                                   for v in variants})

            self.by_variants[key] = models
        return self.by_variants[key]

    def per_variant(self, variants: list[str], stage: str) -> dg.AssetDep:
        """For an asset partitioned by (… × variant) over `variants`."""
        return dg.AssetDep(self._source(variants, stage),
                           partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant"))

    def same_variants(self, variants: list[str], stage: str) -> dg.AssetDep:
        """For an asset partitioned by variant over exactly `variants` (identity)."""
        return dg.AssetDep(self._source(variants, stage))

    def every_variant(self, mapping: dict[str, list[str]] | None = None) -> dg.AssetDep:
        """For an asset partitioned by variant (identity), or by something else: `mapping` gives,
        per variant, the partitions that read it (a comparison reads its two variants)."""
        source = self._source(list(self.exp.variants), "all")  # named `models`
        if mapping is None:
            return dg.AssetDep(source)
        return dg.AssetDep(source, partition_mapping=dg.StaticPartitionMapping(mapping))

    @property
    def assets(self) -> list[dg.SourceAsset]:
        return list(self.by_variants.values())


def observe_jobs(exp: Experiment, sources: list[dg.SourceAsset]) -> list:
    """One observation job per source asset (a job's assets must share one partitioning)."""
    return [
        dg.define_asset_job(f"{exp.name}_observe_{source.key.path[-1]}", selection=dg.AssetSelection.assets(source.key),
                            description=f"Record the content hash of every partition of {source.key.to_user_string()}.")
        for source in sources
    ]


def has_run(project: Project, exp: Experiment) -> bool:
    """Whether the experiment has artifacts in its store (TRAITFLOW_STORAGE, else storage.uri)."""
    import os

    from traitflow.store import experiment_store

    try:  # for s3:// storage, its local mirror: loading definitions asks no bucket anything
        store = experiment_store(exp.spec.storage, project.root, os.environ.get("TRAITFLOW_STORAGE"))
    except TraitflowError:
        return False
    return (Path(store.root) / exp.name).is_dir()


def dataset_change_sensor(project: Project, exp: Experiment, jobs: list) -> dg.SensorDefinition:
    # Observing costs reading every dataset file every 30 s: worth it only for an experiment that
    # has run, or one whose `automation:` reacts to changes. The others start stopped (turn them
    # on in the UI's Automation tab).
    @dg.sensor(name=f"{exp.name}_dataset_changes", jobs=jobs, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING if has_run(project, exp) or reacts_to_changes(exp)
               else dg.DefaultSensorStatus.STOPPED,
               description="Observes the datasets and models when a trait, prompt-set or model file changed, so stale "
                           "partitions show.")
    def dataset_changes(context: dg.SensorEvaluationContext):
        try:
            versions = current_versions(project, exp)
        except TraitflowError as exc:
            yield dg.SkipReason(f"datasets do not load: {exc}")
            return
        digest = hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]
        if context.cursor == digest:
            yield dg.SkipReason("no dataset file changed")
            return
        context.update_cursor(digest)
        for job in jobs:
            yield dg.RunRequest(run_key=f"{job.name}:{digest}", job_name=job.name)

    return dataset_changes


def current_versions(project: Project, exp: Experiment) -> dict[str, dict[str, str]]:
    """Source asset name -> partition -> content hash, as an observation would record them now.
    Every `models*` source has the same per-variant versions: read them with `versions_of`."""
    return {"trait_datasets": trait_versions(project.root / TRAITS_DIR, exp.traits),
            "prompt_sets": prompt_set_versions(project.root / INFERENCE_DIR, list(exp.spec.inference.prompt_sets)),
            "models": {v: model_version(spec, project.root) for v, spec in exp.variants.items()}}


def versions_of(versions: dict[str, dict[str, str]], source: dg.AssetKey, partitions: list[str]) -> dict[str, str]:
    """The versions (from `current_versions`) of one source asset's partitions."""
    name = source.path[-1]
    by_partition = versions["models"] if name.startswith("models") else versions[name]
    return {p: by_partition[p] for p in partitions}


def observed_already(instance: dg.DagsterInstance, key: dg.AssetKey, versions: dict[str, str]) -> bool:
    """Whether the instance's latest observation of every partition has these data versions, so
    observing again would record nothing new (a no-op `traitflow run` then skips it)."""
    from dagster._core.definitions.data_version import extract_data_version_from_entry

    for partition, version in versions.items():
        record = instance.get_latest_data_version_record(key, is_source=True, partition_key=partition)
        seen = extract_data_version_from_entry(record.event_log_entry) if record is not None else None
        if seen is None or seen.value != version:
            return False
    return True
