"""Steering assets per experiment: steering (trait × steered variant) → best_vector (trait)."""

import dagster as dg

from assets.common import GPU_POOL, SINGLE_RUN, VectorAssets, for_each_partition, stage_context
from assets.partitions import trait_variant
from resources import ArtifactStoreResource, ModelResource
from traitflow import pipeline
from traitflow.specs.loader import Experiment, Project


def build_steering_assets(project: Project, exp: Experiment, source: VectorAssets) -> list[dg.AssetsDefinition]:
    variants = pipeline.steering_variants(exp)
    prefix = [exp.name]
    tags = {"traitflow/stage": "steering", "traitflow/experiment": exp.name}
    # Vectors come from the extraction variant and steer each steered variant.
    from_extraction = dg.MultiPartitionMapping({
        "trait": dg.DimensionPartitionMapping("trait", dg.IdentityPartitionMapping()),
        "variant": dg.DimensionPartitionMapping("variant", dg.StaticPartitionMapping({source.extraction_variant: variants})),
    })

    @dg.asset(
        name="steering", key_prefix=prefix, group_name=exp.name, partitions_def=trait_variant(exp, variants),
        backfill_policy=SINGLE_RUN, pool=GPU_POOL, kinds={"pytorch", "json", "altair"}, tags=tags,
        deps=[dg.AssetDep(source.vectors, partition_mapping=from_extraction),
              dg.AssetDep(source.extraction_eval, partition_mapping=from_extraction)],
        code_version=exp.code_version("steering"),
        description="Unsteered baseline and an adaptive coefficient search per layer, judged for trait and coherence.",
    )
    def steering(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_steering_stage, stage_context(context, project, exp, model, storage))

    best_key = dg.AssetKey([*prefix, "best_vector"])
    to_trait = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="trait")
    # best_vector falls back on extraction_eval. Another experiment's (`vectors_from`) has other
    # trait partitions, which no built-in mapping to a single dimension accepts; it is upstream of
    # `steering` already, so the lineage holds without a direct edge.
    own_eval = source.extraction_eval.path[0] == exp.name
    eval_deps = [dg.AssetDep(source.extraction_eval, partition_mapping=to_trait)] if own_eval else []
    refinement = []
    if exp.spec.steering.cma_es.enabled:

        @dg.asset(
            name="cma_es", key_prefix=prefix, group_name=exp.name, partitions_def=trait_variant(exp, variants),
            backfill_policy=SINGLE_RUN, pool=GPU_POOL, kinds={"pytorch", "safetensors"}, tags=tags, deps=[steering],
            code_version=exp.code_version("cma_es"),
            description="CMA-ES over the direction (in a random subspace around it) and the coefficient of the best run.",
        )
        def cma_es(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
            return for_each_partition(context, pipeline.run_cma_es, stage_context(context, project, exp, model, storage))

        refinement = [cma_es]

    @dg.asset(
        name="best_vector", key_prefix=prefix, group_name=exp.name, partitions_def=dg.StaticPartitionsDefinition(exp.traits),
        backfill_policy=SINGLE_RUN, kinds={"json"}, tags=tags,
        deps=[dg.AssetDep(steering, partition_mapping=to_trait), *eval_deps,
              *[dg.AssetDep(a, partition_mapping=to_trait) for a in refinement]],
        code_version=exp.code_version("best_vector"),
        check_specs=[dg.AssetCheckSpec("min_delta", asset=best_key,
                                       description=f"The best vector moves the trait by >= {exp.spec.steering.min_delta} points.")],
        description="The vector to use for this trait: the best valid steering run, else the best held-out accuracy.",
    )
    def best_vector(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_best_vector, stage_context(context, project, exp, model, storage))

    return [steering, *refinement, best_vector]
