"""Inference assets per experiment: inference_responses → projections (prompt_set × variant)."""

import dagster as dg

from assets.common import GPU_POOL, SINGLE_RUN, VectorAssets, for_each_partition, stage_context
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
    common = dict(key_prefix=[exp.name], group_name=exp.name, partitions_def=partitions, backfill_policy=SINGLE_RUN,
                  tags={"traitflow/stage": "inference", "traitflow/experiment": exp.name})
    to_set = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="prompt_set")

    @dg.asset(
        name="inference_responses", **common, pool=GPU_POOL, kinds={"pytorch", "json"},
        deps=[dg.AssetDep(prompt_source, partition_mapping=to_set)],
        code_version=exp.code_version("inference_responses"),
        description="Each variant's replies to the prompt set, with exact token ids.",
    )
    def inference_responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_inference_responses, stage_context(context, project, exp, model, storage))

    every = dg.AllPartitionMapping()

    @dg.asset(
        name="calibration", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(list(exp.variants)), backfill_policy=SINGLE_RUN, pool=GPU_POOL,
        kinds={"pytorch", "json"}, tags={"traitflow/stage": "calibration", "traitflow/experiment": exp.name},
        code_version=exp.code_version("calibration"),
        description="Massive activation dims and mean norms per layer and component, on traitflow's neutral prompts.",
    )
    def calibration(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_calibration, stage_context(context, project, exp, model, storage),
                                  dimension="variant")

    @dg.asset(
        name="projections", **common, pool=GPU_POOL, kinds={"pytorch", "json"},
        deps=[inference_responses, dg.AssetDep(source.vectors, partition_mapping=every), dg.AssetDep(source.extraction_eval, partition_mapping=every),
              dg.AssetDep(calibration, partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant"))],
        code_version=exp.code_version("projections"),
        description="Per-token projections (h·v̂ and ‖h‖) of every response onto every trait's vector.",
    )
    def projections(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_projections, stage_context(context, project, exp, model, storage))

    comparisons = pipeline.comparison_keys(exp)
    if not comparisons:
        return [calibration, inference_responses, projections]

    @dg.asset(
        name="variant_diff", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(comparisons), backfill_policy=SINGLE_RUN, pool=GPU_POOL,
        kinds={"pytorch", "json"}, tags={"traitflow/stage": "comparison", "traitflow/experiment": exp.name},
        deps=[dg.AssetDep(inference_responses, partition_mapping=every), dg.AssetDep(source.vectors, partition_mapping=every),
              dg.AssetDep(source.extraction_eval, partition_mapping=every)],
        code_version=exp.code_version("variant_diff"),
        description="A's responses replayed through A and B: Cohen's d, cosine and per-token/clause deltas per trait x layer.",
    )
    def variant_diff(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_variant_diff, stage_context(context, project, exp, model, storage),
                                  dimension="comparison")

    return [calibration, inference_responses, projections, variant_diff]
