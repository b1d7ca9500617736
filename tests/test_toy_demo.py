"""Known answers on the toy model, through the shipped demo spec and Dagster.

The toy traits are built to be separable, so every trait's best held-out accuracy must be ≥ 0.9,
and the monitoring vector must project higher on replies that express a trait than on replies
that express its opposite.
"""

import json

from tests.conftest import TOY_TRAITS as TRAITS


def test_every_toy_trait_extracts_with_high_held_out_accuracy(toy_demo):
    traits = toy_demo["report"]["traits"]
    assert set(traits) == set(TRAITS)
    for trait, info in traits.items():
        assert info["extraction"]["val_accuracy"] >= 0.9, (trait, info)
        evaluation = json.loads((toy_demo["root"] / f"experiments/demo/extraction_eval/{trait}/chat/extraction_eval.json").read_text())
        for position, best in evaluation["best"].items():
            assert best["val_accuracy"] >= 0.9 and best["polarity"] == 1, (trait, position, best)


def test_projections_are_higher_on_replies_that_express_the_trait(toy_demo):
    projections = json.loads((toy_demo["root"] / "experiments/demo/projections/toy/contrast/chat/projections.json").read_text())
    for trait in TRAITS:
        layer = str(projections["traits"][trait]["layers"][0])
        means = {"positive": [], "negative": []}
        for item in projections["items"]:
            item_trait, side, _ = item["id"].split(":")
            if item_trait != trait:
                continue
            values = item["scores"][trait][layer][item["prompt_len"]:][:5]
            means[side].append(sum(values) / len(values))
        assert len(means["positive"]) == len(means["negative"]) == 6
        separated = sum(p > n for p in means["positive"] for n in means["negative"]) / 36
        assert separated >= 0.9, (trait, means)


def test_pessimist_lora_projects_lower_on_optimism(toy_demo):
    """The LoRA organism's own replies to neutral prompts sit lower on the optimism vector."""
    def mean_projection(variant: str) -> float:
        record = json.loads((toy_demo["root"] / f"experiments/demo/projections/toy/general/{variant}/projections.json").read_text())
        layer = str(record["traits"]["toy/optimism"]["layers"][0])
        values = [v for item in record["items"] for v in item["scores"]["toy/optimism"][layer][item["prompt_len"]:][:5]]
        return sum(values) / len(values)

    assert mean_projection("pessimist") < mean_projection("chat")
