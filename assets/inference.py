"""Inference assets per experiment: inference_responses → projections (prompt_set × variant)."""

import dagster as dg

from assets.common import VectorAssets, for_each_partition, stage_context, table_args
from assets.partitions import prompt_set_variant
from resources import ArtifactStoreResource, ModelResource
from traitflow import pipeline
from traitflow.specs.loader import Experiment, Project


def build_inference_assets(
    project: Project, exp: Experiment, prompt_source: dg.AssetsDefinition, source: VectorAssets,
) -> list[dg.AssetsDefinition]:
    partitions = prompt_set_variant(exp)
    if partitions is None:
        return []
    to_set = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="prompt_set")

    @dg.asset(**table_args(exp, "inference_responses"), partitions_def=partitions,
              deps=[dg.AssetDep(prompt_source, partition_mapping=to_set)])
    def inference_responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_inference_responses, stage_context(context, project, exp, model, storage))

    every = dg.AllPartitionMapping()

    @dg.asset(**table_args(exp, "calibration"), partitions_def=dg.StaticPartitionsDefinition(list(exp.variants)))
    def calibration(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_calibration, stage_context(context, project, exp, model, storage),
                                  dimension="variant")

    @dg.asset(
        **table_args(exp, "projections"), partitions_def=partitions,
        deps=[inference_responses, dg.AssetDep(source.vectors, partition_mapping=every), dg.AssetDep(source.extraction_eval, partition_mapping=every),
              dg.AssetDep(calibration, partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant"))],
    )
    def projections(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_projections, stage_context(context, project, exp, model, storage))

    comparisons = pipeline.comparison_keys(exp)
    if not comparisons:
        return [calibration, inference_responses, projections]

    @dg.asset(
        **table_args(exp, "variant_diff"), partitions_def=dg.StaticPartitionsDefinition(comparisons),
        deps=[dg.AssetDep(inference_responses, partition_mapping=every), dg.AssetDep(source.vectors, partition_mapping=every),
              dg.AssetDep(source.extraction_eval, partition_mapping=every)],
    )
    def variant_diff(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_variant_diff, stage_context(context, project, exp, model, storage),
                                  dimension="comparison")

    return [calibration, inference_responses, projections, variant_diff]
