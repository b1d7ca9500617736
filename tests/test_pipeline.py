"""The vertical slice through Dagster on a tiny random Llama: artifacts, formats, one model load,
single-run backfills, the `dagster asset materialize` CLI and the `traitflow run/report` commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from assets import build_defs
from tests.traitinterp import nonblank_lines
from traitflow.cli import main
from traitflow.specs.loader import load_project
from traitflow.store import ArtifactStore

REPO = Path(__file__).resolve().parents[1]

def test_every_artifact_is_written(project_root, materialized):
    store = ArtifactStore(project_root / "experiments")
    for asset, name in [("responses", "responses.json"), ("vetting", "vetting.json"), ("activations", "activations.safetensors"),
                        ("vectors", "vectors.safetensors"), ("extraction_eval", "extraction_eval.json"),
                        ("extraction_eval", "eval_heatmap.png"), ("extraction_eval", "eval_heatmap.html"),
                        ("logit_lens", "logit_lens.json")]:
        for trait in ("formal", "optimism"):
            assert store.path("t", asset, ("starter", trait, "chat"), name).exists()
    for asset in ("inference_responses", "projections"):
        for variant in ("chat", "plain"):
            name = "projections.json" if asset == "projections" else "responses.json"
            assert store.path("t", asset, ("starter", "general", variant), name).exists()
    leftovers = [p for p in (project_root / "experiments").rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert leftovers == []


def test_each_model_loads_once(materialized):
    # Two variants (chat, plain) share weights but differ in spec: exactly two loads for
    # 2 traits + 2 inference partitions over six assets.
    assert materialized["loads"] == 2


def test_runs_cover_all_partitions_in_one_run_per_stage(materialized):
    instance = materialized["instance"]
    runs = instance.get_runs()
    observations = [r for r in runs if r.job_name.startswith("t_observe_")]
    materializations = [r for r in runs if not r.job_name.startswith("t_observe_")]
    # One observation per source (trait datasets, prompt sets, the models of all variants and of the
    # extraction variant), then one run per stage (generation, extraction, steering, selection,
    # calibration, inference, comparison, summary), not one per partition.
    assert len(observations) == 4 and len(materializations) == 8
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    key = dg.AssetKey(["t", "vectors"])
    partitions = instance.get_materialized_partitions(key)
    assert partitions == {"starter/formal|chat", "starter/optimism|chat"}


def test_responses_keep_exact_generated_ids(project_root, materialized):
    from transformers import AutoTokenizer

    record = json.loads((project_root / "experiments/t/responses/starter/optimism/chat/responses.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(project_root / "models" / "llama")
    written = {side: nonblank_lines(project_root / f"datasets/traits/starter/optimism/{side}.jsonl") for side in ("positive", "negative")}
    assert len(record["items"]) == len(written["positive"]) + len(written["negative"]) and record["paired"] is True
    item = record["items"][0]
    first = json.loads(written["positive"][0])
    assert item["side"] == "positive" and (item["prompt"], item["system_prompt"]) == (first["prompt"], first["system_prompt"])
    assert 1 <= len(item["response_ids"]) <= 4
    assert item["response"] == tokenizer.decode(item["response_ids"], skip_special_tokens=True)
    expected_prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": item["system_prompt"]}, {"role": "user", "content": item["prompt"]}],
        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert item["prompt_ids"] == list(expected_prompt)


def test_vectors_are_unit_norm_with_metadata(project_root, materialized):
    store = ArtifactStore(project_root / "experiments")
    tensors, meta = store.read_tensors(store.path("t", "vectors", ("starter", "optimism", "chat"), "vectors.safetensors"))
    assert meta["layers"] == [0, 1, 2]
    assert meta["component"] == "residual" and "decoder block" in meta["layer_numbering"]
    assert meta["model"]["source"].endswith("models/llama")
    assert set(meta["input_hashes"]) == {"trait"}
    names = {n for n in tensors if n.startswith("vector/")}
    assert names == {f"vector/{p}/residual/{m}" for p in ("prompt[-1]", "response[:3]") for m in ("probe", "mean_diff")}
    for name in names:
        assert tensors[name].shape == (3, 64)
        norms = tensors[name].norm(dim=-1)
        assert ((norms - 1).abs() < 1e-5).all()


def test_extraction_eval_has_every_method_and_layer(project_root, materialized):
    record = json.loads((project_root / "experiments/t/extraction_eval/starter/optimism/chat/extraction_eval.json").read_text())
    assert len(record["scores"]) == 2 * 2 * 3
    for row in record["scores"]:
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["auroc"] <= 1 and row["polarity"] in (1, -1)
    assert set(record["best"]) == {"prompt[-1]", "response[:3]"}


def test_projections_cover_every_token_and_trait(project_root, materialized):
    record = json.loads((project_root / "experiments/t/projections/starter/general/chat/projections.json").read_text())
    assert set(record["traits"]) == {"starter/formal", "starter/optimism"}
    for item in record["items"]:
        n = len(item["token_ids"])
        assert len(item["tokens"]) == n
        for trait, info in record["traits"].items():
            assert list(item["scores"][trait]) == [str(layer) for layer in info["layers"]]
            for values in item["scores"][trait].values():
                assert len(values) == n
        for norms in item["norms"].values():
            assert len(norms) == n and min(norms) > 0


def test_report_json_shape(project_root, materialized, capsys):
    assert main(["report", "t", "--root", str(project_root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["experiment"] == "t"
    extraction = report["traits"]["starter/optimism"]["extraction"]
    assert {"method", "layer", "val_accuracy"} <= set(extraction)
    assert report["traits"]["starter/formal"]["materialized"] == ["responses", "vetting", "activations", "vectors",
                                                                  "extraction_eval", "logit_lens", "steering", "best_vector"]
    assert main(["report", "t", "--root", str(project_root)]) == 0
    assert "starter/optimism" in capsys.readouterr().out


def test_rerun_overwrites_atomically_and_keeps_results(project_root, materialized):
    """A second materialization of one partition replaces its files; vectors are deterministic."""
    store = ArtifactStore(project_root / "experiments")
    path = store.path("t", "vectors", ("starter", "formal", "chat"), "vectors.safetensors")
    before = store.read_tensors(path)[0]
    defs = build_defs(load_project(project_root))
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["t", "vectors"])], resources=defs.resources,
                            partition_key="starter/formal|chat", instance=dg.DagsterInstance.ephemeral())
    assert result.success
    after = store.read_tensors(path)[0]
    assert all((before[k] == after[k]).all() for k in before)


def test_dagster_cli_materializes_one_partition(project_root, materialized, tmp_path):
    """`dagster asset materialize -m definitions --select … --partition …` from the repo root."""
    target = project_root / "experiments/t/extraction_eval/starter/optimism/chat/extraction_eval.json"
    target.unlink()
    env = dict(os.environ, TRAITFLOW_ROOT=str(project_root), DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("")
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "definitions",
         "--select", "t/extraction_eval", "--partition", "starter/optimism|chat"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert target.exists()
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert instance.get_materialized_partitions(dg.AssetKey(["t", "extraction_eval"])) == {"starter/optimism|chat"}


def test_run_cli_reports_bad_stage_in_one_line(project_root, capsys):
    assert main(["run", "t", "--root", str(project_root), "--stages", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown stage 'nope'" in err


def test_editing_one_trait_makes_only_its_partitions_stale(project_root, materialized):
    """`traitflow run` observed the datasets first; an edit + observation marks exactly that trait stale."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.definitions.observe import observe
    from dagster._core.loader import LoadingContextForTest

    instance = materialized["instance"]
    definition = project_root / "datasets/traits/starter/formal/definition.txt"
    original = definition.read_text()

    def statuses() -> dict[str, str]:
        defs = build_defs(load_project(project_root))
        resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
        return {f"{name} {key}": resolver.get_status(dg.AssetKey(["t", name]), key).value
                for name in ("responses", "vectors") for key in ("starter/formal|chat", "starter/optimism|chat")}

    assert set(statuses().values()) == {"FRESH"}
    try:
        definition.write_text(original + "\nAlso count stiff greetings.\n")
        defs = build_defs(load_project(project_root))
        observe([a for a in defs.assets if a.key == dg.AssetKey(["t", "trait_datasets"])], instance=instance)
        after = statuses()
    finally:
        definition.write_text(original)
    # The asset that reads the trait files goes stale for that trait only (Dagster then marks each
    # downstream partition stale as its parent is re-materialized with a new data version).
    assert after["responses starter/formal|chat"] == "STALE"
    assert after["responses starter/optimism|chat"] == "FRESH" and after["vectors starter/optimism|chat"] == "FRESH"


def test_variant_diff_replays_a_through_b(project_root, materialized):
    record = json.loads((project_root / "experiments/t/variant_diff/chat_vs_plain/starter/general/variant_diff.json").read_text())
    assert (record["a"], record["b"], record["sign"]) == ("chat", "plain", "B - A")
    for trait in ("starter/formal", "starter/optimism"):
        info = record["traits"][trait]
        assert [row["layer"] for row in info["layers"]] == [0, 1, 2]
        peak = max(info["layers"], key=lambda r: abs(r["cohens_d"]))
        assert info["peak"]["layer"] == peak["layer"]
        for row in info["layers"]:
            assert -1.0 <= row["cosine"] <= 1.0
        for prompt in info["top_prompts"]:
            assert len(prompt["tokens"]) == len(prompt["deltas"])


def test_report_lists_comparisons(project_root, materialized, capsys):
    assert main(["report", "t", "--root", str(project_root), "--json"]) == 0
    comparisons = json.loads(capsys.readouterr().out)["comparisons"]
    assert set(comparisons) == {"chat_vs_plain"}
    for row in comparisons["chat_vs_plain"].values():
        assert set(row) == {"layer", "cohens_d", "cohens_d_paired", "cosine"}
