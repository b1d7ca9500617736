"""Extraction assets per experiment: responses → vetting → activations → vectors → extraction_eval →
logit_lens (trait × the extraction variant). Keys, kinds, descriptions, code versions and pools come
from the asset table (traitflow.graph); the edges here are its `upstream`, with their mappings."""

import dagster as dg

from assets.checks import build_check_step, check_spec
from assets.common import for_each_partition, stage_context, table_args
from assets.partitions import trait_variant
from assets.sources import ModelSources
from resources import ArtifactStoreResource, ModelResource
from traitflow.specs.loader import Experiment, Project
from traitflow.stages import extraction as stages


def build_extraction_assets(project: Project, exp: Experiment, trait_source: dg.AssetsDefinition,
                            models: ModelSources) -> list[dg.AssetsDefinition]:
    partitions = trait_variant(exp, [exp.extraction_variant])
    # Trait files are versioned per partition by the `trait_datasets` source asset, so editing one
    # trait marks only its partitions stale.
    to_trait = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="trait")

    @dg.asset(**table_args(exp, "responses"), partitions_def=partitions,
              deps=[dg.AssetDep(trait_source, partition_mapping=to_trait), models.per_variant([exp.extraction_variant], "extraction")])
    def responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_responses, stage_context(context, project, exp, model, storage))

    @dg.asset(**table_args(exp, "vetting"), partitions_def=partitions, deps=[responses])
    def vetting(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_vetting, stage_context(context, project, exp, model, storage))

    @dg.asset(**table_args(exp, "activations"), partitions_def=partitions, deps=[responses, vetting])
    def activations(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_activations, stage_context(context, project, exp, model, storage))

    @dg.asset(**table_args(exp, "vectors"), partitions_def=partitions, deps=[activations])
    def vectors(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_vectors, stage_context(context, project, exp, model, storage))

    @dg.asset(**table_args(exp, "extraction_eval"), partitions_def=partitions, deps=[activations, vectors])
    def extraction_eval(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_extraction_eval, stage_context(context, project, exp, model, storage))

    @dg.asset(**table_args(exp, "logit_lens"), partitions_def=partitions, deps=[vectors, extraction_eval])
    def logit_lens(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, stages.run_logit_lens, stage_context(context, project, exp, model, storage))

    checks = [
        build_check_step(exp, "vetting", [check_spec(
            exp, "vetting", "min_per_side", partitions,
            f"At least {exp.spec.extraction.vetting.min_per_side} replies pass vetting on each side; otherwise that "
            "trait's chain stops here (per partition).")]),
        build_check_step(exp, "extraction_eval", [
            check_spec(exp, "extraction_eval", "polarity", partitions, "Held-out positives project higher on the best vectors."),
            check_spec(exp, "extraction_eval", "min_val_accuracy", partitions,
                       f"Best held-out accuracy >= {exp.spec.extraction.min_val_accuracy}.")]),
    ]
    return [responses, vetting, activations, vectors, extraction_eval, logit_lens, *checks]
