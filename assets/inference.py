"""Inference assets per experiment: inference_responses → (inference_activations →) projections (prompt_set × variant)."""

import dagster as dg

from assets.common import VectorAssets, for_each_partition, stage_context, table_args
from assets.partitions import prompt_set_variant
from assets.sources import ModelSources
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project
from traitflow.stages import comparison as comparison_stage
from traitflow.stages import inference as inference_stage


def build_inference_assets(
    project: Project, exp: Experiment, prompt_source: dg.AssetsDefinition, source: VectorAssets, models: ModelSources,
) -> list[dg.AssetsDefinition]:
    partitions = prompt_set_variant(exp)
    if partitions is None:
        return []
    to_set = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="prompt_set")
    generating, replaying = exp.generating_variants, exp.replaying_variants

    def same_prompt_set(variants: dict[str, list[str]]) -> dg.MultiPartitionMapping:
        """Same prompt set; `variants` maps each upstream variant to the downstream ones that read it."""
        return dg.MultiPartitionMapping({
            "prompt_set": dg.DimensionPartitionMapping("prompt_set", dg.IdentityPartitionMapping()),
            "variant": dg.DimensionPartitionMapping("variant", dg.StaticPartitionMapping(variants)),
        })

    @dg.asset(**table_args(exp, "inference_responses"), partitions_def=prompt_set_variant(exp, generating),
              deps=[dg.AssetDep(prompt_source, partition_mapping=to_set), models.per_variant(generating, "generating")])
    def inference_responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, inference_stage.run_inference_responses, stage_context(context, project, exp, model, storage))

    responses = [dg.AssetDep(inference_responses, partition_mapping=same_prompt_set({v: [v] for v in generating}))]
    replayed = []
    if replaying:
        # A replaying variant reads its source variant's responses: a declared edge, so Dagster runs
        # the source first and a new source reply marks the replay stale.
        sources: dict[str, list[str]] = {}
        for variant in replaying:
            sources.setdefault(exp.spec.inference.replay[variant], []).append(variant)

        @dg.asset(**table_args(exp, "replayed_responses"), partitions_def=prompt_set_variant(exp, replaying),
                  deps=[dg.AssetDep(inference_responses, partition_mapping=same_prompt_set(sources)),
                        models.per_variant(replaying, "replay")])
        def replayed_responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
            return for_each_partition(context, inference_stage.run_replayed_responses, stage_context(context, project, exp, model, storage))

        responses.append(dg.AssetDep(replayed_responses, partition_mapping=same_prompt_set({v: [v] for v in replaying})))
        replayed = [replayed_responses]

    saved = []
    if exp.spec.inference.save_activations:
        # Opt-in: every response token's activations, so projections onto new traits need no model.
        @dg.asset(**table_args(exp, "inference_activations"), partitions_def=partitions,
                  deps=[*responses, models.per_variant(exp.inference_variants, "inference")])
        def inference_activations(context: dg.AssetExecutionContext, model: ModelResource,
                                  storage: ArtifactStoreResource) -> dg.MaterializeResult:
            return for_each_partition(context, inference_stage.run_inference_activations,
                                      stage_context(context, project, exp, model, storage))

        saved = [inference_activations]

    every = dg.AllPartitionMapping()
    vectors_from = exp.vector_source("inference")  # whose vectors (and CMA-ES refinements) are monitored

    # Calibration serves the monitored (inference) variants.
    @dg.asset(**table_args(exp, "calibration"), partitions_def=dg.StaticPartitionsDefinition(exp.inference_variants),
              deps=[models.same_variants(exp.inference_variants, "inference")])
    def calibration(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, inference_stage.run_calibration, stage_context(context, project, exp, model, storage),
                                  dimension="variant")

    @dg.asset(
        **table_args(exp, "projections"), partitions_def=partitions,
        deps=[*responses, *saved, dg.AssetDep(source.vectors, partition_mapping=every), dg.AssetDep(source.extraction_eval, partition_mapping=every),
              *([dg.AssetDep(dg.AssetKey([vectors_from.name, "cma_es"]), partition_mapping=every)]
                if vectors_from.spec.steering.cma_es.enabled else []),
              dg.AssetDep(calibration, partition_mapping=dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="variant"))],
    )
    def projections(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, inference_stage.run_projections, stage_context(context, project, exp, model, storage))

    comparisons = comparison_stage.comparison_keys(exp)
    if not comparisons:
        return [calibration, inference_responses, *replayed, *saved, projections]

    reads_variant: dict[str, list[str]] = {}  # a comparison reads its two variants' models
    for key, c in zip(comparisons, exp.spec.comparisons, strict=True):
        for variant in (c.a, c.b):
            reads_variant.setdefault(variant, []).append(key)

    @dg.asset(
        **table_args(exp, "variant_diff"), partitions_def=dg.StaticPartitionsDefinition(comparisons),
        deps=[*(dg.AssetDep(a, partition_mapping=every) for a in (inference_responses, *replayed)),
              dg.AssetDep(source.vectors, partition_mapping=every),
              dg.AssetDep(source.extraction_eval, partition_mapping=every),
              models.every_variant(reads_variant)],
    )
    def variant_diff(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, comparison_stage.run_variant_diff, stage_context(context, project, exp, model, storage),
                                  dimension="comparison")

    return [calibration, inference_responses, *replayed, *saved, projections, variant_diff]
