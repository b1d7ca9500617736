"""The benchmark asset per experiment (`benchmarks:`): one partition per benchmark × variant, the
conditions inside. Key, kinds, description, code version and pool come from the asset table
(traitflow.graph)."""

import dagster as dg

from assets.common import for_each_partition, stage_context, table_args
from assets.sources import ModelSources
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project
from traitflow.stages import capability as stages


def build_benchmark_asset(project: Project, exp: Experiment, best_vector: dg.AssetKey, models: ModelSources) -> list[dg.AssetsDefinition]:
    keys = stages.benchmark_keys(exp)
    if not keys:
        return []
    reads_variant: dict[str, list[str]] = {}  # each partition reads its variant's model
    for key in keys:
        reads_variant.setdefault(key.rpartition("/")[2], []).append(key)

    @dg.asset(**table_args(exp, "benchmark"), partitions_def=dg.StaticPartitionsDefinition(keys),
              deps=[dg.AssetDep(best_vector, partition_mapping=dg.AllPartitionMapping()), models.every_variant(reads_variant)])
    def benchmark(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_benchmark, stage_context(context, project, exp, model, storage),
                                  dimension="benchmark")

    return [benchmark]
