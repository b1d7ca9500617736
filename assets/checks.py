"""Asset checks per partition, and the traits a failed blocking check stops.

Dagster reports an `AssetCheckResult` once per step, and a step of a single-run backfill covers
many partitions: one trait failing vetting would fail the check for all of them and, if blocking,
stop every trait's chain. So traitflow declares its checks partitioned like their asset and
records one evaluation per partition:
1. the stage returns its `Check`s; the asset body stores each in that partition's materialization
   metadata (`check/<name>`: passed, `check/<name>/detail`: why);
2. a check step (`<experiment>__<asset>_checks`, one `multi_asset_check` per asset, run by Dagster
   right after the asset in the same run) turns each partition's stored outcome into that
   partition's check evaluation, pointed at that materialization, so Dagster (the UI, and the
   automation condition `all_deps_blocking_checks_passed`) sees it as current.

Dagster's own blocking acts per step, not per partition (it would fail the whole range), so
traitflow applies blocking itself, per partition, from the recorded evaluations:
- `traitflow run` leaves out the partitions downstream of a failed blocking check;
- an asset body (a run from the UI over many traits) skips those partitions with a log line and
  the metadata `skipped: <why>`; it writes no artifact for them;
- `automation.on_change: materialize` requires `all_deps_blocking_checks_passed` per partition.
"""

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)

from traitflow.graph import BLOCKING_CHECKS, descendants, row
from traitflow.specs.loader import Experiment
from traitflow.stages.context import Check


def check_spec(exp: Experiment, asset: str, name: str, partitions_def: dg.PartitionsDefinition,
               description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=dg.AssetKey([exp.name, asset]), partitions_def=partitions_def,
                             blocking=(asset, name) in BLOCKING_CHECKS, description=description)


def check_metadata(name: str, check: Check) -> dict:
    """What an asset body stores per partition for its check step to record."""
    return {f"check/{name}": check.passed, f"check/{name}/detail": check.detail}


def build_check_step(exp: Experiment, asset: str, specs: list[dg.AssetCheckSpec]) -> dg.AssetChecksDefinition:
    """The step that records `asset`'s checks per partition, from each partition's latest
    materialization (this run's), as Dagster evaluations that target that materialization."""
    key = dg.AssetKey([exp.name, asset])

    @dg.multi_asset_check(name=f"{exp.name}__{asset}_checks", specs=specs, can_subset=True,
                          description=f"Records {asset}'s checks per partition.")
    def checks(context: dg.AssetCheckExecutionContext):
        from dagster._core.storage.event_log.base import AssetRecordsFilter  # the event-log storage: 0.8 s to import

        step = context.op_execution_context
        partitions = list(step.partition_keys)
        # This run materialized each of its partitions once, so the newest len(partitions) records
        # are one per partition (one query, not one per partition).
        latest: dict[str, object] = {}
        for record in context.instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, asset_partitions=partitions), limit=len(partitions)).records:
            latest.setdefault(record.partition_key, record)
        for partition in partitions:
            record = latest.get(partition)
            if record is None:
                continue
            metadata = record.asset_materialization.metadata
            for spec in specs:
                passed = metadata.get(f"check/{spec.name}")
                if passed is None:  # skipped (a failed blocking check upstream): nothing was checked
                    continue
                detail = metadata[f"check/{spec.name}/detail"].value
                step.log_event(AssetCheckEvaluation(
                    asset_key=key, check_name=spec.name, passed=bool(passed.value), partition=partition,
                    blocking=spec.blocking, metadata={"detail": detail}, description=detail,
                    target_materialization_data=AssetCheckEvaluationTargetMaterializationData(
                        run_id=record.run_id, storage_id=record.storage_id, timestamp=record.timestamp)))
        yield from ()  # every evaluation is logged above, one per partition

    return checks


def failed_blocking_traits(instance: dg.DagsterInstance, exp: Experiment) -> dict[str, str]:
    """Trait -> which blocking check failed, from the latest evaluation of each partition of `exp`
    (the experiment that extracts the vectors in question: for steering with `vectors_from`, that
    one). Every blocking check today sits on a trait × extraction-variant asset (vetting), so a
    failure stops that trait's chain. Only a failure of the partition's current materialization
    counts: once the trait is edited and vetted again, the new result decides."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    keys = [dg.AssetCheckKey(dg.AssetKey([exp.name, asset]), name) for asset, name in sorted(BLOCKING_CHECKS)]
    failed: dict[str, str] = {}
    for info in instance.event_log_storage.get_asset_check_partition_info(keys):
        if info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED and info.is_current and info.partition_key:
            trait = info.partition_key.split("|")[0]
            failed[trait] = f"{info.check_key.asset_key.path[-1]}/{info.check_key.name} failed for {info.partition_key}"
    return failed


def blocked_by_checks(asset: str) -> bool:
    """Whether a failed blocking check upstream stops this asset's partitions of that trait."""
    return row(asset).partitions.startswith("trait") and any(asset in descendants(upstream) for upstream, _ in BLOCKING_CHECKS)


def checked_experiment(exp: Experiment, asset: str) -> Experiment:
    """Whose blocking checks matter for `asset`: the experiment its vectors come from."""
    stage = row(asset).vector_stage
    return exp.vector_source(stage) if stage else exp
