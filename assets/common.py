"""What every asset body shares: a StageContext from resources, and the per-partition loop."""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from assets.automation import automation_condition
from assets.checks import blocked_by_checks, check_metadata, checked_experiment, failed_blocking_traits
from assets.partitions import split_key
from resources import ArtifactStoreResource, ModelResource
from traitflow.errors import TraitflowError, TransientError
from traitflow.graph import row
from traitflow.server.client import run_stage
from traitflow.specs.loader import Experiment, Project
from traitflow.stages.context import Markdown, StageContext, StageOutput, Table
from traitflow.store.locks import partition_lock
from traitflow.view.urls import asset_page

SINGLE_RUN = dg.BackfillPolicy.single_run()
INTERRUPTED = "interrupted (Ctrl-C)"  # a step of `traitflow run` stopped by the user: the runner stops too


def step_retries() -> int:
    """TRAITFLOW_STEP_RETRIES (default 2; 0: none): tries again for a judge or a bucket that did not
    answer (per partition, in for_each_partition) and for a step that crashed or was preempted."""
    text = os.environ.get("TRAITFLOW_STEP_RETRIES", "2").strip()
    if not (text.isascii() and text.isdigit()):
        raise TraitflowError(f"TRAITFLOW_STEP_RETRIES must be a whole number of retries (0: none), got {text!r}")
    return int(text)


def table_args(exp: Experiment, name: str) -> dict:
    """The @dg.asset arguments an asset's row in the asset table gives (traitflow.graph): key,
    group, kinds, description, code version, stage tag, the GPU pool for model work (and one GPU
    per step pod under dagster-k8s, docs/deploy.md), a single-run backfill policy (many
    partitions, one model load), and a retry policy for a step that crashed or was preempted
    (TRAITFLOW_STEP_RETRIES, default 2, 0: none; 1 s then 3 s apart). A judge or a bucket that
    did not answer is retried per partition instead (for_each_partition), so a hiccup at the
    90th partition of a backfill does not redo the first 89."""
    spec_row = row(name)
    args = dict(name=name, key_prefix=[exp.name], group_name=exp.name, backfill_policy=SINGLE_RUN, kinds=set(spec_row.kinds),
                description=spec_row.description, code_version=exp.code_version(name),
                tags={"traitflow/stage": spec_row.stage, "traitflow/experiment": exp.name})
    if spec_row.gpu:
        args["pool"] = GPU_POOL
        args["op_tags"] = {"dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}}
    retries = step_retries()
    if retries:
        args["retry_policy"] = dg.RetryPolicy(max_retries=retries, delay=1, backoff=dg.Backoff.EXPONENTIAL)
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
    if isinstance(value, Table):
        return dg.MetadataValue.table(
            records=[dg.TableRecord(record) for record in value.records()],
            schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in value.columns.items()]))
    return value


def output_metadata(output: StageOutput, experiment: str, asset: str, dims: dict[str, str],
                    served_by: str | None = None) -> dict:
    """A stage's output as the Dagster metadata of its partition: its numbers, tables, chart and
    samples, the link to the partition's page in the viewer (`traitflow view`, TRAITFLOW_VIEW_URL),
    the model server that ran it, and its checks' outcomes (for the check step)."""
    metadata = {k: _metadata_value(k, v) for k, v in output.metadata().items()}
    page = asset_page(experiment, asset, dims)
    if page is not None:
        metadata["viewer"] = dg.MetadataValue.url(page)
    if served_by is not None:
        metadata["model_server"] = dg.MetadataValue.url(served_by)
    for name, check in output.checks.items():
        metadata |= check_metadata(name, check)
    return metadata


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
    if context.retry_number:
        context.log.warning(f"{context.asset_key.to_user_string()}: retry {context.retry_number} (TRAITFLOW_STEP_RETRIES)")
    for number, key in enumerate(keys, start=1):
        dims = split_key(partitions_def, key) if isinstance(partitions_def, dg.MultiPartitionsDefinition) else {dimension: key}
        why = skip.get(dims.get("trait", ""))
        if why is not None:
            context.log.warning(f"[{number}/{len(keys)}] {asset} {key} skipped: {why}")
            context.add_asset_metadata({"skipped": why}, partition_key=key)
            continue
        context.log.info(f"[{number}/{len(keys)}] {context.asset_key.to_user_string()} {key}")
        retries, attempt = step_retries(), 0
        while True:
            try:
                with partition_lock(ctx.store.root, ctx.experiment.name, asset, key, run_id=context.run_id):
                    output, served_by = run_stage(ctx, stage, asset, dims)
                break
            except TransientError as exc:  # a judge or a bucket that did not answer: this partition again
                if attempt >= retries:
                    raise dg.Failure(str(exc), allow_retries=False) from exc
                attempt += 1
                context.log.warning(f"{key}: {exc}; trying again in {3 ** (attempt - 1)} s ({attempt}/{retries}, TRAITFLOW_STEP_RETRIES)")
                time.sleep(3 ** (attempt - 1))
            except TraitflowError as exc:  # the user's to fix (a spec, a missing artifact, credentials): no retries
                raise dg.Failure(str(exc), allow_retries=False) from exc
            except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as exc:
                # Dagster retries an interrupted step (a preempted pod); Ctrl-C on `traitflow run`, which
                # runs its steps in this process (assets/runner.py tags its runs with our PID), stops.
                if context.run.tags.get("traitflow/pid") == str(os.getpid()):
                    raise dg.Failure(INTERRUPTED, allow_retries=False) from exc
                raise
        context.add_asset_metadata(output_metadata(output, ctx.experiment.name, asset, dims, served_by), partition_key=key)
    return dg.MaterializeResult(asset_key=context.assets_def.key)


def once_per_experiment(context: dg.AssetExecutionContext, stage: Callable[[StageContext], StageOutput],
                        ctx: StageContext) -> dg.MaterializeResult:
    """Run an unpartitioned asset's `stage` (one per experiment, e.g. `summary`): under the asset's
    lock like any partition, here (no model work, so never on the model server)."""
    asset = context.assets_def.key.path[-1]
    try:
        with partition_lock(ctx.store.root, ctx.experiment.name, asset, "all", run_id=context.run_id):
            output = stage(ctx)
    except TransientError:  # a bucket that did not answer: the step's retry policy tries again
        raise
    except TraitflowError as exc:  # a spec or a store to fix: no retries
        raise dg.Failure(str(exc), allow_retries=False) from exc
    return dg.MaterializeResult(metadata=output_metadata(output, ctx.experiment.name, asset, {}))
