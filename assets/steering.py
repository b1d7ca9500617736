"""Steering assets per experiment: steering (trait × steered variant) → cma_es (opt-in) → best_vector
(trait). Keys, kinds, descriptions, code versions and pools come from the asset table (traitflow.graph)."""

import dagster as dg

from assets.checks import build_check_step, check_spec
from assets.common import VectorAssets, for_each_partition, stage_context, table_args
from assets.partitions import trait_variant
from assets.sources import ModelSources
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project
from traitflow.stages import steering as stages


def build_steering_assets(project: Project, exp: Experiment, source: VectorAssets, models: ModelSources) -> list[dg.AssetsDefinition]:
    variants = stages.steering_variants(exp)
    # Vectors come from the extraction variant and steer each steered variant.
    from_extraction = dg.MultiPartitionMapping({
        "trait": dg.DimensionPartitionMapping("trait", dg.IdentityPartitionMapping()),
        "variant": dg.DimensionPartitionMapping("variant", dg.StaticPartitionMapping({source.extraction_variant: variants})),
    })

    @dg.asset(
        **table_args(exp, "steering"), partitions_def=trait_variant(exp, variants),
        deps=[models.per_variant(variants, "steering"), dg.AssetDep(source.vectors, partition_mapping=from_extraction),
              dg.AssetDep(source.extraction_eval, partition_mapping=from_extraction)],
    )
    def steering(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_steering_stage, stage_context(context, project, exp, model, storage))

    to_trait = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="trait")
    # best_vector falls back on extraction_eval. Another experiment's (`vectors_from`) has other
    # trait partitions, which no built-in mapping to a single dimension accepts; it is upstream of
    # `steering` already, so the lineage holds without a direct edge.
    own_eval = source.extraction_eval.path[0] == exp.name
    eval_deps = [dg.AssetDep(source.extraction_eval, partition_mapping=to_trait)] if own_eval else []
    refinement = []
    if exp.spec.steering.cma_es.enabled:

        @dg.asset(**table_args(exp, "cma_es"), partitions_def=trait_variant(exp, variants), deps=[steering])
        def cma_es(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
            return for_each_partition(context, stages.run_cma_es, stage_context(context, project, exp, model, storage))

        refinement = [cma_es]

    per_trait = dg.StaticPartitionsDefinition(exp.traits)

    @dg.asset(**table_args(exp, "best_vector"), partitions_def=per_trait,
              deps=[dg.AssetDep(steering, partition_mapping=to_trait), *eval_deps,
                    *[dg.AssetDep(a, partition_mapping=to_trait) for a in refinement]])
    def best_vector(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_best_vector, stage_context(context, project, exp, model, storage))

    checks = build_check_step(exp, "best_vector", [check_spec(
        exp, "best_vector", "min_delta", per_trait, f"The best vector moves the trait by >= {exp.spec.steering.min_delta} points.")])
    return [steering, *refinement, best_vector, checks]
