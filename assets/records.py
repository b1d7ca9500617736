"""What `traitflow sync pull` tells Dagster: the pulled artifacts as materializations.

Dagster's instance is not synced (it is one machine's run history). Without it, a machine that
pulled an experiment would show every asset as never materialized, and `traitflow run` would
re-do it all. So after a pull, each partition whose artifact is now there (or, for raw
activations left in the bucket, there) is recorded as a runless materialization, upstream first,
carrying what Dagster's staleness check reads: the asset's current code version and, per parent,
the data version and event of what it was made from. The sources (trait datasets, prompt sets,
models) are observed first, as `traitflow run` does. A partition whose spec, data or model differs
on this machine then shows stale, exactly as if it had run here.
"""

import inspect

import dagster as dg
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    INPUT_DATA_VERSION_TAG_PREFIX,
    INPUT_EVENT_POINTER_TAG_PREFIX,
    DataVersion,
    compute_logical_data_version,
    extract_data_version_from_entry,
)

from assets import build_defs
from assets.partitions import split_key
from assets.runner import observe_sources, run_process_tags
from traitflow.artifacts import ARTIFACTS, PARTITION_RULES
from traitflow.graph import ASSETS
from traitflow.specs.loader import Project
from traitflow.store import ArtifactStore


def _artifact_path(store: ArtifactStore, experiment: str, asset: str, partitions_def, key: str | None) -> str:
    """The artifact's path relative to the experiment's folder, e.g. `vectors/toy/optimism/chat/vectors.safetensors`."""
    cls = ARTIFACTS[asset]
    if key is None:
        parts: list[str] = []
    elif isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dims = split_key(partitions_def, key)
        parts = [dims[name] for name in inspect.signature(PARTITION_RULES[cls.partitions]).parameters]
    else:
        parts = [key]
    return cls.path(store, experiment, *parts).relative_to(store.root / experiment).as_posix()


def record_pulled(project: Project, experiment: str, instance: dg.DagsterInstance, store: ArtifactStore,
                  present: set[str], source: str) -> int:
    """Record a materialization for every partition of `experiment` whose artifact is in `present`
    (paths relative to the experiment's folder) and whose parents are recorded. Returns how many."""
    exp = project.experiments[experiment]
    from resources.progress import progress_logger

    defs = build_defs(project, loggers={"progress": progress_logger})  # the observation runs log compactly, as in `traitflow run`
    graph = defs.resolve_asset_graph()
    observe_sources(project, exp, defs, instance, run_process_tags())
    recorded = 0
    for row in ASSETS:  # the table lists every asset after its parents
        key = dg.AssetKey([experiment, row.name])
        if not graph.has(key) or row.name not in ARTIFACTS:
            continue
        node = graph.get(key)
        keys = node.partitions_def.get_partition_keys() if node.is_partitioned else [None]
        for partition in keys:
            if _artifact_path(store, experiment, row.name, node.partitions_def, partition) not in present:
                continue
            code_version = exp.code_version(row.name)
            tags, inputs = {CODE_VERSION_TAG: code_version}, {}
            for parent in sorted(node.parent_keys):
                parent_node = graph.get(parent)
                parent_keys = (graph.get_parent_partition_keys_for_child(partition, parent, key).partitions_subset.get_partition_keys()
                               if parent_node.is_partitioned else [None])
                records = [instance.get_latest_data_version_record(parent, parent_node.is_external, k) for k in parent_keys]
                if any(r is None for r in records):
                    break  # a parent never made here: this partition cannot be up to date, leave it unrecorded
                versions = sorted(extract_data_version_from_entry(r.event_log_entry).value for r in records if r is not None)
                version = versions[0] if len(versions) == 1 else DataVersion("|".join(versions)).value
                inputs[parent] = DataVersion(version)
                tags[f"{INPUT_DATA_VERSION_TAG_PREFIX}/{parent.to_user_string()}"] = version
                tags[f"{INPUT_EVENT_POINTER_TAG_PREFIX}/{parent.to_user_string()}"] = str(max(r.storage_id for r in records if r))
            else:
                tags[DATA_VERSION_TAG] = compute_logical_data_version(code_version, inputs).value
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    key, partition=partition, tags=tags,
                    metadata={"pulled_from": dg.MetadataValue.text(source),
                              "path": dg.MetadataValue.path(str(store.root / experiment / _artifact_path(
                                  store, experiment, row.name, node.partitions_def, partition)))}))
                recorded += 1
    return recorded
