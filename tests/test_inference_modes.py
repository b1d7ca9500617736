"""The three ways to get responses for monitoring: generate, replay another variant's ids, import a file."""

import json
import shutil
from pathlib import Path

import dagster as dg

from assets.runner import run_experiment
from traitflow.specs.loader import load_project

EXPERIMENT = """\
name: modes
variants:
  chat: {model: models/llama, device: cpu}
  replayer: {model: models/llama, device: cpu, chat_template: false}
  external: {model: models/llama, device: cpu}
traits: [starter/optimism]
inference:
  prompt_sets: [starter/general]
  max_new_tokens: 5
  replay: {replayer: chat}
  import: {external: data/external.json}
"""


def test_generate_replay_and_import(project_root, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(project_root, root, ignore=shutil.ignore_patterns("experiments", "specs"))
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "modes.yaml").write_text(EXPERIMENT)
    prompts = json.loads((root / "datasets/inference/starter/general.json").read_text())["prompts"]
    (root / "data").mkdir()
    (root / "data" / "external.json").write_text(json.dumps(
        [{"id": p["id"], "response": f"An external answer number {p['id']}."} for p in prompts]))
    run_experiment(load_project(root), "modes", stages=["inference_responses", "replayed_responses"],
                   instance=dg.DagsterInstance.ephemeral())

    def record(variant: str) -> dict:
        asset = "replayed_responses" if variant == "replayer" else "inference_responses"
        return json.loads((root / f"experiments/modes/{asset}/starter/general/{variant}/responses.json").read_text())

    chat, replayer, external = record("chat"), record("replayer"), record("external")
    assert chat["mode"] == "greedy" and replayer["mode"] == "replay" and external["mode"] == "import"
    assert replayer["replayed_from"] == "chat"
    docs = (Path(__file__).resolve().parents[1] / "docs" / "artifacts.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `replayed_responses`"))
    assert all(k in row for k in replayer), row  # every key it writes is documented
    for a, b in zip(chat["items"], replayer["items"], strict=True):
        assert (a["prompt_ids"], a["response_ids"]) == (b["prompt_ids"], b["response_ids"])  # the very same tokens
    assert external["tokenized_from_text"] is True
    assert external["items"][0]["response"] == f"An external answer number {prompts[0]['id']}."
    assert len(external["items"][0]["response_ids"]) > 3


def test_replay_is_a_declared_edge(project_root, tmp_path):
    """A replaying variant's responses are their own asset, downstream of the exact partition of
    the variant it replays: Dagster orders them, and a new source reply marks the replay stale."""
    from assets import build_defs

    root = tmp_path / "proj"
    shutil.copytree(project_root, root, ignore=shutil.ignore_patterns("experiments", "specs"))
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "modes.yaml").write_text(EXPERIMENT.replace("  import: {external: data/external.json}\n", ""))
    graph = build_defs(load_project(root)).resolve_asset_graph()
    replayed = dg.AssetKey(["modes", "replayed_responses"])
    assert graph.get(replayed).partitions_def.get_partition_keys() == ["starter/general|replayer"]
    generated = graph.get(dg.AssetKey(["modes", "inference_responses"])).partitions_def.get_partition_keys()
    assert sorted(generated) == ["starter/general|chat", "starter/general|external"]
    from dagster._core.definitions.partitions.context import partition_loading_context

    with partition_loading_context(dynamic_partitions_store=dg.DagsterInstance.ephemeral()):
        upstream = graph.get_parent_partition_keys_for_child("starter/general|replayer", dg.AssetKey(["modes", "inference_responses"]),
                                                             replayed)
    assert set(upstream.partitions_subset.get_partition_keys()) == {"starter/general|chat"}


def test_import_file_must_exist(project_root, tmp_path):
    from traitflow.errors import SpecErrors

    root = tmp_path / "proj"
    shutil.copytree(project_root, root, ignore=shutil.ignore_patterns("experiments", "specs"))
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "modes.yaml").write_text(EXPERIMENT)
    try:
        load_project(root)
    except SpecErrors as errors:
        assert any(e.field == "inference.import.external" and "does not exist" in e.message for e in errors.errors)
    else:
        raise AssertionError("a missing import file must be a spec error")


def test_projection_score_options_through_the_pipeline(project_root, materialized, tmp_path):
    """score: normalized, centre and clean_massive_dims use the calibration asset's numbers."""
    root = tmp_path / "proj"
    shutil.copytree(project_root, root)
    spec = root / "specs" / "experiments" / "t.yaml"
    spec.write_text(spec.read_text().replace("  layers: best,best+1\n",
                                             "  layers: best,best+1\n  score: normalized\n  centre: true\n  clean_massive_dims: true\n"))
    run_experiment(load_project(root), "t", stages=["calibration", "projections"], instance=dg.DagsterInstance.ephemeral())
    calibration = json.loads((root / "experiments/t/calibration/chat/calibration.json").read_text())
    assert len(calibration["components"]["residual"]["mean_norm"]) == 3 and calibration["n_tokens"] > 0
    plain = json.loads((project_root / "experiments/t/projections/starter/general/chat/projections.json").read_text())
    tuned = json.loads((root / "experiments/t/projections/starter/general/chat/projections.json").read_text())
    assert (tuned["mode"], tuned["centred"]) == ("normalized", True)
    assert tuned["items"][0]["scores"] != plain["items"][0]["scores"]
