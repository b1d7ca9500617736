"""The compiler: specs -> Dagster definitions (keys, partitions, groups, code versions, fast load)."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets import build_defs
from tests.test_specs import GOOD, make_project
from tests.traitinterp import STARTER_TRAITS
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]


def defs_for(root: Path) -> dg.Definitions:
    return build_defs(load_project(root))


def by_key(defs: dg.Definitions) -> dict[str, dg.AssetsDefinition]:
    return {a.key.to_user_string(): a for a in defs.assets}


def test_asset_graph_shape(tmp_path):
    root = make_project(tmp_path, GOOD, {"small": "model: o/s\n"})
    assets = by_key(defs_for(root))
    expected = {"exp/trait_datasets", "exp/responses", "exp/vetting", "exp/logit_lens", "exp/steering", "exp/best_vector", "exp/activations", "exp/vectors", "exp/extraction_eval",
                "exp/prompt_sets", "exp/inference_responses", "exp/projections", "exp/variant_diff", "exp/calibration",
                "exp/summary",  # unpartitioned: one per experiment
                # the model variants, as sources: all of them, and the extraction (and steering) variant alone
                "exp/models", "exp/models_extraction"}
    assert expected == set(assets)
    responses = assets["exp/responses"]
    keys = responses.partitions_def.get_partition_keys()
    assert len(keys) == len(STARTER_TRAITS)  # the starter traits × the extraction variant
    assert "starter/optimism|chat" in keys
    projections = assets["exp/projections"]
    assert set(projections.partitions_def.get_partition_keys()) == {"starter/general|chat", "starter/general|inline"}
    assert responses.group_names_by_key[responses.key] == "exp"
    assert {"pytorch", "json"} <= set(responses.specs_by_key[responses.key].kinds)
    assert responses.specs_by_key[responses.key].tags["traitflow/stage"] == "generation"  # the asset table's stage
    assert projections.specs_by_key[projections.key].tags["traitflow/stage"] == "inference"
    deps = {d.asset_key.to_user_string() for d in projections.specs_by_key[projections.key].deps}
    assert deps == {"exp/inference_responses", "exp/vectors", "exp/extraction_eval", "exp/calibration"}
    summary = assets["exp/summary"]
    assert summary.partitions_def is None and summary.specs_by_key[summary.key].tags["traitflow/stage"] == "summary"
    assert {d.asset_key.to_user_string() for d in summary.specs_by_key[summary.key].deps} == {
        "exp/best_vector", "exp/extraction_eval", "exp/variant_diff"}
    graph = dg.Definitions.validate_loadable(defs_for(root))  # raises if the graph is inconsistent
    assert graph is None


def code_versions(root: Path) -> dict[str, str]:
    return {k: a.code_versions_by_key[a.key] for k, a in by_key(defs_for(root)).items() if isinstance(a, dg.AssetsDefinition)}


def test_code_versions_follow_the_spec_fields_each_asset_reads(tmp_path):
    root = make_project(tmp_path, GOOD, {"small": "model: o/s\n"})
    exp_file = root / "specs" / "experiments" / "exp.yaml"

    def changed_by(old: str, new: str) -> set[str]:
        before = code_versions(root)
        exp_file.write_text(exp_file.read_text().replace(old, new))
        after = code_versions(root)
        return {k for k in before if before[k] != after[k]}

    assert changed_by('layers: "best,best+2"', 'layers: "best"') == {"exp/projections"}
    extraction_chain = {"exp/activations", "exp/vectors", "exp/extraction_eval", "exp/logit_lens", "exp/projections",
                        "exp/steering", "exp/best_vector", "exp/variant_diff", "exp/summary"}
    assert changed_by('layers: "30%-60%"', 'layers: "all"') == extraction_chain
    # A new vetting threshold re-filters (and re-extracts) but never regenerates responses.
    assert changed_by("extraction: {", "extraction: {vetting: {pos_threshold: 70}, ") == {"exp/vetting"} | extraction_chain
    assert changed_by("extraction: {", "extraction: {max_new_tokens: 9, ") == {"exp/responses", "exp/vetting"} | extraction_chain


def observed_versions(source, instance: dg.DagsterInstance) -> dict[str, str]:
    from dagster._core.definitions.observe import observe

    observe([source], instance=instance)
    records = instance.fetch_observations(source.key, limit=1000).records
    latest: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r.storage_id):
        observation = record.asset_observation
        latest[observation.partition] = observation.tags["dagster/data_version"]
    return latest


def test_trait_source_versions_each_trait_by_content(tmp_path):
    root = make_project(tmp_path, GOOD, {"small": "model: o/s\n"})
    instance = dg.DagsterInstance.ephemeral()
    source = by_key(defs_for(root))["exp/trait_datasets"]
    first = observed_versions(source, instance)
    assert len(first) == len(STARTER_TRAITS)
    folder = root / "datasets" / "traits" / "starter" / "optimism"
    with (folder / "positive.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "one more", "system_prompt": "be optimistic"}) + "\n")
    with (folder / "negative.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "one more", "system_prompt": "be pessimistic"}) + "\n")
    second = observed_versions(by_key(defs_for(root))["exp/trait_datasets"], instance)
    assert {k for k in first if first[k] != second[k]} == {"starter/optimism"}


def test_definitions_load_without_torch():
    """Dagster loads definitions in many processes; they must not import torch or transformers."""
    code = "import sys, definitions; print(len(list(definitions.defs.assets)), 'torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    n, torch_loaded, transformers_loaded = out.stdout.split()
    assert int(n) > 0 and torch_loaded == "False" and transformers_loaded == "False"
