"""`vectors_from`: extract once in one experiment, steer and monitor with those vectors in another."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from traitflow.errors import SpecErrors
from traitflow.specs.loader import load_project

USER = """\
name: u
variants:
  steered: {model: models/llama, device: cpu}
traits: [starter/optimism]
steering:
  vectors_from: t
  layers: "1"
  search: {steps: 1, questions: 2, max_new_tokens: 4}
inference:
  vectors_from: t
  prompt_sets: [starter/general]
  layers: best
  max_new_tokens: 4
"""


@pytest.fixture(scope="module")
def user_root(project_root, materialized, tmp_path_factory) -> Path:
    """A copy of the materialized slice (experiment t, with its artifacts) plus an experiment u
    that extracts nothing and takes t's vectors."""
    root = tmp_path_factory.mktemp("vectors_from") / "proj"
    shutil.copytree(project_root, root)
    (root / "specs" / "experiments" / "u.yaml").write_text(USER)
    return root


def test_the_graph_depends_on_the_source_experiment(user_root):
    from assets import build_defs

    project = load_project(user_root)
    exp = project.experiments["u"]
    assert exp.vector_source("steering").name == "t" and not exp.extracts
    defs = build_defs(project)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "u/steering" in keys and "u/responses" not in keys and "u/vectors" not in keys
    assert dg.AssetKey(["t", "vectors"]) in graph.get(dg.AssetKey(["u", "steering"])).parent_keys
    assert dg.AssetKey(["t", "extraction_eval"]) in graph.get(dg.AssetKey(["u", "projections"])).parent_keys


def test_code_versions_chain_through_the_source(user_root, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(user_root / "specs", root / "specs")
    shutil.copytree(user_root / "datasets", root / "datasets")
    before = load_project(root).experiments["u"].code_version("steering")
    t = root / "specs" / "experiments" / "t.yaml"
    t.write_text(t.read_text().replace("methods: [probe, mean_diff]", "methods: [mean_diff]"))
    assert load_project(root).experiments["u"].code_version("steering") != before


@pytest.mark.parametrize("spec, needle", [
    (USER.replace("vectors_from: t\n  layers", "vectors_from: nope\n  layers"), "experiment 'nope' does not exist"),
    ("name: u\nvariants: {chat: {model: models/llama}}\ntraits: [starter/optimism]\nsteering: {vectors_from: u}\n",
     "names this experiment itself"),
    (USER.replace("layers: best\n", "layers: best\n  position: 'response[:1]'\n"), "not among extraction.position"),
])
def test_vectors_from_mistakes(user_root, tmp_path, spec, needle):
    root = tmp_path / "proj"
    shutil.copytree(user_root / "specs", root / "specs")
    shutil.copytree(user_root / "datasets", root / "datasets")
    (root / "specs" / "experiments" / "u.yaml").write_text(spec)
    with pytest.raises(SpecErrors) as info:
        load_project(root)
    messages = [e.format() for e in info.value.errors]
    assert any("u.yaml" in m and needle in m for m in messages), messages


def test_steer_and_monitor_with_another_experiments_vectors(user_root, materialized, tmp_path):
    from assets.runner import run_experiment

    project = load_project(user_root)
    # A copy of the instance that recorded t's materializations: Dagster then maps u's partitions
    # onto t's (lineage, staleness) as it does for a user who ran both.
    home = tmp_path / "dagster_home"
    shutil.copytree(materialized["home"], home)
    instance = dg.DagsterInstance.from_config(str(home))
    run_experiment(project, "u", stages=["all"], instance=instance)
    out = user_root / "experiments"
    header = json.loads((out / "u" / "steering" / "starter" / "optimism" / "steered" / "results.jsonl").read_text().splitlines()[0])
    assert header["vector_source"]["experiment"] == "t"
    ours = json.loads((out / "u" / "projections" / "starter" / "general" / "steered" / "projections.json").read_text())
    theirs = json.loads((out / "t" / "projections" / "starter" / "general" / "chat" / "projections.json").read_text())
    assert ours["traits"]["starter/optimism"]["method"] == theirs["traits"]["starter/optimism"]["method"]
    layer = str(ours["traits"]["starter/optimism"]["layers"][0])
    assert layer == str(theirs["traits"]["starter/optimism"]["layers"][0])  # both monitor t's best layer
    for a, b in zip(ours["items"], theirs["items"], strict=True):
        assert a["token_ids"] == b["token_ids"]
        assert a["scores"]["starter/optimism"][layer] == pytest.approx(b["scores"]["starter/optimism"][layer], abs=1e-4)
    assert not (out / "u" / "vectors").exists()  # u extracted nothing
    from traitflow.report import build_report, format_report

    report = build_report(project, "u")
    assert report["traits"]["starter/optimism"]["extraction"]["experiment"] == "t"
    assert {"steering", "best_vector"} <= set(report["traits"]["starter/optimism"]["materialized"])
    assert "vectors from experiment t (vectors_from)" in format_report(report)
