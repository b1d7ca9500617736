"""What every asset body shares: a StageContext from resources, and the per-partition loop."""

from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from assets.automation import automation_condition
from assets.checks import blocked_by_checks, check_metadata, checked_experiment, failed_blocking_traits
from assets.partitions import split_key
from resources import ArtifactStoreResource, ModelResource
from traitflow.graph import row
from traitflow.server.client import run_stage
from traitflow.specs.loader import Experiment, Project
from traitflow.stages.context import Markdown, StageContext, StageOutput
from traitflow.store.locks import partition_lock

SINGLE_RUN = dg.BackfillPolicy.single_run()


def table_args(exp: Experiment, name: str) -> dict:
    """The @dg.asset arguments an asset's row in the asset table gives (traitflow.graph): key,
    group, kinds, description, code version, stage tag, the GPU pool for model work, and a
    single-run backfill policy (many partitions, one model load)."""
    spec_row = row(name)
    args = dict(name=name, key_prefix=[exp.name], group_name=exp.name, backfill_policy=SINGLE_RUN, kinds=set(spec_row.kinds),
                description=spec_row.description, code_version=exp.code_version(name),
                tags={"traitflow/stage": spec_row.stage, "traitflow/experiment": exp.name})
    if spec_row.gpu:
        args["pool"] = GPU_POOL
    condition = automation_condition(exp, name)
    if condition is not None:
        args["automation_condition"] = condition
    return args


@dataclass(frozen=True)
class VectorAssets:
    """The assets a stage reads vectors from: this experiment's, or those of its `vectors_from`."""

    extraction_variant: str
    vectors: dg.AssetKey
    extraction_eval: dg.AssetKey
GPU_POOL = "gpu"


def stage_context(
    context: dg.AssetExecutionContext, project: Project, exp: Experiment, model: ModelResource, storage: ArtifactStoreResource
) -> StageContext:
    return StageContext(
        project=project,
        experiment=exp,
        store=storage.for_experiment(exp),
        load_model=lambda variant: model.load(exp.variants[variant]),
        log=context.log.info,
        storage_override=storage.override_uri or None,
        # With `traitflow serve` up, stages run in it: models, torch and the chart renderer are warm there.
        server=model.server(),
    )


def _metadata_value(key: str, value):
    if key == "path" or key.endswith(("_html", "_log")):
        return dg.MetadataValue.path(value)
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(value.text)
    return value


def for_each_partition(
    context: dg.AssetExecutionContext, stage: Callable[..., StageOutput], ctx: StageContext, dimension: str = "trait"
) -> dg.MaterializeResult:
    """Run `stage` for every partition of this run (one, or many under a single-run backfill),
    attaching each partition's own headline numbers to its materialization.

    A stage may return checks (`{name: Check}`); each goes into that partition's metadata, from
    which the asset's check step records the partition's evaluation (assets/checks.py). A
    partition of a trait whose blocking check failed upstream (vetting left too few replies) is
    skipped: no artifact, and `skipped` in its metadata.

    Each partition's work holds that partition's lock (`traitflow.store.locks`): a second run of
    the same (experiment, asset, partition) at the same time, from `traitflow run` or the UI, fails
    at once with one line naming the holder's PID, instead of interleaving its writes.
    """
    partitions_def = context.assets_def.partitions_def
    keys = context.partition_keys
    asset = context.assets_def.key.path[-1]
    # Traits whose blocking check failed: this asset's partitions of them are skipped, and stages
    # that read every trait's vectors (projections, comparisons) leave them out.
    blocked: dict[str, str] = {}
    if blocked_by_checks(asset) or row(asset).vector_stage is not None:
        blocked = failed_blocking_traits(context.instance, checked_experiment(ctx.experiment, asset))
    ctx.blocked_traits = blocked
    skip = blocked if blocked_by_checks(asset) else {}
    for number, key in enumerate(keys, start=1):
        dims = split_key(partitions_def, key) if isinstance(partitions_def, dg.MultiPartitionsDefinition) else {dimension: key}
        why = skip.get(dims.get("trait", ""))
        if why is not None:
            context.log.warning(f"[{number}/{len(keys)}] {asset} {key} skipped: {why}")
            context.add_asset_metadata({"skipped": why}, partition_key=key)
            continue
        context.log.info(f"[{number}/{len(keys)}] {context.asset_key.to_user_string()} {key}")
        with partition_lock(ctx.store.root, ctx.experiment.name, asset, key, run_id=context.run_id):
            output, served_by = run_stage(ctx, stage, asset, dims)
        metadata = {k: _metadata_value(k, v) for k, v in output.metadata().items()}
        if served_by is not None:
            metadata["model_server"] = dg.MetadataValue.url(served_by)
        for name, check in output.checks.items():
            metadata |= check_metadata(name, check)
        context.add_asset_metadata(metadata, partition_key=key)
    return dg.MaterializeResult(asset_key=context.assets_def.key)
