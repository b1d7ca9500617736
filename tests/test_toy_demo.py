"""Known answers on the toy model, through the shipped demo spec and Dagster.

The toy traits are built to be separable, so every trait's best held-out accuracy must be ≥ 0.9,
and the monitoring vector must project higher on replies that express a trait than on replies
that express its opposite.
"""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.runner import run_experiment
from traitflow.report import build_report
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]
TRAITS = ("toy/formality", "toy/optimism", "toy/refusal")


def contrast_prompt_set(root: Path) -> dict:
    """Each trait's steering questions (not used for extraction) under each pole's system prompt."""
    prompts, n = [], 0
    for trait in TRAITS:
        folder = root / "datasets" / "traits" / trait
        questions = json.loads((folder / "steering.json").read_text())["questions"][:6]
        for side in ("positive", "negative"):
            system = json.loads((folder / f"{side}.jsonl").read_text().splitlines()[0])["system_prompt"]
            for question in questions:
                n += 1
                prompts.append({"id": f"{trait}:{side}:{n}", "text": question, "system_prompt": system})
    return {"name": "toy contrast", "description": "each pole of each toy trait, on unseen questions", "prompts": prompts}


@pytest.fixture(scope="session")
def toy_demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("toy_demo")
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets")
    (root / "datasets/inference/toy/contrast.json").write_text(json.dumps(contrast_prompt_set(root)))
    demo = (root / "specs/experiments/demo.yaml").read_text()
    (root / "specs/experiments/demo.yaml").write_text(demo.replace("prompt_sets: [toy/general]", "prompt_sets: [toy/general, toy/contrast]"))
    project = load_project(root, experiments=["demo"])
    summary = run_experiment(project, "demo", stages=["all"], instance=dg.DagsterInstance.ephemeral())
    return {"root": root, "project": project, "summary": summary, "report": build_report(project, "demo")}


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
