"""Extraction assets per experiment: responses → activations → vectors → extraction_eval (trait × variant)."""

import dagster as dg

from assets.common import GPU_POOL, SINGLE_RUN, for_each_partition, stage_context
from assets.partitions import trait_variant
from resources import ArtifactStoreResource, ModelResource
from traitflow import pipeline
from traitflow.specs.loader import Experiment, Project


def build_extraction_assets(project: Project, exp: Experiment, trait_source: dg.AssetsDefinition) -> list[dg.AssetsDefinition]:
    partitions = trait_variant(exp, [exp.extraction_variant])
    prefix = [exp.name]
    # Code versions hash the spec sections each asset depends on; trait files are versioned per
    # partition by the `trait_datasets` source asset, so editing one trait marks only its partitions stale.
    common = dict(key_prefix=prefix, group_name=exp.name, partitions_def=partitions, backfill_policy=SINGLE_RUN,
                  tags={"traitflow/stage": "extraction", "traitflow/experiment": exp.name})
    to_trait = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="trait")

    @dg.asset(
        name="responses", **common, pool=GPU_POOL, kinds={"pytorch", "json"},
        deps=[dg.AssetDep(trait_source, partition_mapping=to_trait)],
        code_version=exp.code_version("responses"),
        description="Greedy replies to each trait's positive and negative scenarios, with the exact token ids.",
    )
    def responses(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_responses, stage_context(context, project, exp, model, storage))

    vetting_key = dg.AssetKey([*prefix, "vetting"])

    @dg.asset(
        name="vetting", **common, kinds={"json"}, deps=[responses],
        code_version=exp.code_version("vetting"),
        check_specs=[dg.AssetCheckSpec("min_per_side", asset=vetting_key, blocking=True,
                                       description=f"At least {exp.spec.extraction.vetting.min_per_side} replies pass "
                                                   "vetting on each side; otherwise nothing downstream runs.")],
        description="Judge scores of each reply's first 16 words; which replies express their pole.",
    )
    def vetting(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_vetting, stage_context(context, project, exp, model, storage))

    @dg.asset(
        name="activations", **common, pool=GPU_POOL, kinds={"pytorch", "safetensors"}, deps=[vetting],
        code_version=exp.code_version("activations"),
        description="Activations pooled over each position window, all layers, one batched forward pass.",
    )
    def activations(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_activations, stage_context(context, project, exp, model, storage))

    @dg.asset(
        name="vectors", **common, kinds={"pytorch", "safetensors"}, deps=[activations],
        code_version=exp.code_version("vectors"),
        description="Unit trait vectors per position × component × method × layer.",
    )
    def vectors(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_vectors, stage_context(context, project, exp, model, storage))

    eval_key = dg.AssetKey([*prefix, "extraction_eval"])

    @dg.asset(
        name="extraction_eval", **common, kinds={"json", "altair"}, deps=[activations, vectors],
        check_specs=[
            dg.AssetCheckSpec("polarity", asset=eval_key, description="Held-out positives project higher on the best vectors."),
            dg.AssetCheckSpec("min_val_accuracy", asset=eval_key,
                              description=f"Best held-out accuracy >= {exp.spec.extraction.min_val_accuracy}."),
        ],
        code_version=exp.code_version("extraction_eval"),
        description="Held-out accuracy, AUROC, Cohen's d and polarity per method × layer; the best vector.",
    )
    def extraction_eval(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_extraction_eval, stage_context(context, project, exp, model, storage))

    @dg.asset(
        name="logit_lens", **common, pool=GPU_POOL, kinds={"pytorch", "json"}, deps=[vectors, extraction_eval],
        code_version=exp.code_version("logit_lens"),
        description="Top and bottom tokens of each layer's best vector after the final norm and unembedding.",
    )
    def logit_lens(context: dg.AssetExecutionContext, model: ModelResource, storage: ArtifactStoreResource) -> dg.MaterializeResult:
        return for_each_partition(context, pipeline.run_logit_lens, stage_context(context, project, exp, model, storage))

    return [responses, vetting, activations, vectors, extraction_eval, logit_lens]
