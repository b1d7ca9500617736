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


def test_pessimist_lora_moves_optimism_most(toy_demo):
    """Replaying the chat model's tokens through its pessimism LoRA moves optimism (d <= -1.0) at
    least twice as far as any trait the LoRA did not touch; replaying the pessimist's own tokens the
    other way, the clauses that move most carry the trait's words."""
    import yaml

    report = toy_demo["report"]["comparisons"]
    forward = report["chat_vs_pessimist"]
    assert forward["toy/optimism"]["cohens_d"] <= -1.0, forward
    for trait in ("toy/formality", "toy/refusal"):
        assert abs(forward["toy/optimism"]["cohens_d"]) >= 2 * abs(forward[trait]["cohens_d"]), forward
    reverse = json.loads((toy_demo["root"] / "experiments/demo/variant_diff/pessimist_vs_chat/toy/general/variant_diff.json")
                         .read_text())
    assert reverse["traits"]["toy/optimism"]["peak"]["cohens_d"] >= 1.0
    keywords = yaml.safe_load((toy_demo["root"] / "datasets/traits/toy/optimism/trait.yaml").read_text())["keywords"]
    words = {w.lower() for w in keywords["positive"] + keywords["negative"]} | {"sadly", "great"}
    clauses = [c["clause"].lower() for c in reverse["traits"]["toy/optimism"]["top_clauses"][:5]]
    assert all(any(w in clause for w in words) for clause in clauses), clauses
