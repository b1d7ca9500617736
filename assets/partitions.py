"""Partition definitions from the specs: trait × variant and prompt_set × variant."""

import dagster as dg

from traitflow.specs.loader import Experiment


def trait_variant(exp: Experiment, variants: list[str]) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {"trait": dg.StaticPartitionsDefinition(exp.traits), "variant": dg.StaticPartitionsDefinition(variants)}
    )


def prompt_set_variant(exp: Experiment) -> dg.MultiPartitionsDefinition | None:
    if not exp.spec.inference.prompt_sets:
        return None
    return dg.MultiPartitionsDefinition(
        {
            "prompt_set": dg.StaticPartitionsDefinition(list(exp.spec.inference.prompt_sets)),
            "variant": dg.StaticPartitionsDefinition(exp.inference_variants),
        }
    )


def split_key(partitions_def: dg.MultiPartitionsDefinition, key: str) -> dict[str, str]:
    return dict(partitions_def.get_partition_key_from_str(key).keys_by_dimension)
