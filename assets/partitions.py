"""Partition definitions from the specs: trait × variant and prompt_set × variant."""

import dagster as dg

from traitflow.specs.loader import Experiment


def trait_variant(exp: Experiment, variants: list[str]) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {"trait": dg.StaticPartitionsDefinition(exp.traits), "variant": dg.StaticPartitionsDefinition(variants)}
    )


def prompt_set_variant(exp: Experiment, variants: list[str] | None = None) -> dg.MultiPartitionsDefinition | None:
    """prompt set × `variants` (default: every inference variant); None without prompt sets or variants."""
    variants = exp.inference_variants if variants is None else variants
    if not exp.spec.inference.prompt_sets or not variants:
        return None
    return dg.MultiPartitionsDefinition(
        {
            "prompt_set": dg.StaticPartitionsDefinition(list(exp.spec.inference.prompt_sets)),
            "variant": dg.StaticPartitionsDefinition(variants),
        }
    )


def split_key(partitions_def: dg.MultiPartitionsDefinition, key: str) -> dict[str, str]:
    return dict(partitions_def.get_partition_key_from_str(key).keys_by_dimension)
