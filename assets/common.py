"""What every asset body shares: a StageContext from resources, and the per-partition loop."""

from collections.abc import Callable

import dagster as dg

from assets.partitions import split_key
from resources import ArtifactStoreResource, ModelResource
from traitflow.pipeline import StageContext
from traitflow.specs.loader import Experiment, Project

SINGLE_RUN = dg.BackfillPolicy.single_run()
GPU_POOL = "gpu"


def stage_context(
    context: dg.AssetExecutionContext, project: Project, exp: Experiment, model: ModelResource, storage: ArtifactStoreResource
) -> StageContext:
    return StageContext(
        project=project,
        experiment=exp,
        store=storage.for_uri(exp.spec.storage.uri),
        load_model=lambda variant: model.load(exp.variants[variant]),
        log=context.log.info,
    )


def for_each_partition(
    context: dg.AssetExecutionContext, stage: Callable[..., dict], ctx: StageContext
) -> dg.MaterializeResult:
    """Run `stage` for every partition of this run (one, or many under a single-run backfill),
    attaching each partition's own headline numbers to its materialization."""
    partitions_def = context.assets_def.partitions_def
    keys = context.partition_keys
    for number, key in enumerate(keys, start=1):
        dims = split_key(partitions_def, key)
        context.log.info(f"[{number}/{len(keys)}] {context.asset_key.to_user_string()} {key}")
        numbers = stage(ctx, **dims)
        metadata = {k: (dg.MetadataValue.path(v) if k == "path" else v) for k, v in numbers.items()}
        context.add_asset_metadata(metadata, partition_key=key)
    return dg.MaterializeResult()
