"""The summary asset per experiment (unpartitioned, run last): every trait's best vector in one
table. Key, kinds, description and code version come from the asset table (traitflow.graph)."""

import dagster as dg

from assets.common import once_per_experiment, stage_context, table_args
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project
from traitflow.stages import summary as stages


def build_summary_asset(project: Project, exp: Experiment, upstream: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """`upstream`: the partitioned assets it reads, of which it reads every partition (an
    unpartitioned asset over partitioned ones: AllPartitionMapping), so any of them re-materialized
    marks it stale."""
    every = dg.AllPartitionMapping()

    @dg.asset(**table_args(exp, "summary"), deps=[dg.AssetDep(key, partition_mapping=every) for key in upstream])
    def summary(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return once_per_experiment(context, stages.run_summary, stage_context(context, project, exp, model, storage))

    return summary
