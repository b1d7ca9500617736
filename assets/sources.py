"""Observable source assets for the user's data files, versioned per partition by content hash.

Observing them (the UI's "Observe sources", or the `observe_datasets` schedule) records each trait's
or prompt set's current hash; when one file changes, only the partitions downstream of that trait
show as stale.
"""

import dagster as dg

from traitflow.data.prompts import load_prompt_set
from traitflow.data.traits import load_trait
from traitflow.specs.loader import INFERENCE_DIR, TRAITS_DIR, Experiment, Project


def trait_source(project: Project, exp: Experiment) -> dg.AssetsDefinition:
    @dg.observable_source_asset(
        name="trait_datasets", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(exp.traits),
        description="Trait folders (scenarios, definition, steering questions); data version = content hash.",
    )
    def trait_datasets() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(
            {t: dg.DataVersion(load_trait(project.root / TRAITS_DIR / t, t).content_hash()) for t in exp.traits}
        )

    return trait_datasets


def prompt_source(project: Project, exp: Experiment) -> dg.AssetsDefinition | None:
    names = list(exp.spec.inference.prompt_sets)
    if not names:
        return None

    @dg.observable_source_asset(
        name="prompt_sets", key_prefix=[exp.name], group_name=exp.name,
        partitions_def=dg.StaticPartitionsDefinition(names),
        description="Prompt-set files; data version = content hash.",
    )
    def prompt_sets() -> dg.DataVersionsByPartition:
        return dg.DataVersionsByPartition(
            {n: dg.DataVersion(load_prompt_set(project.root / INFERENCE_DIR / f"{n}.json", n).content_hash()) for n in names}
        )

    return prompt_sets
