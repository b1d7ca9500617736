"""The demo's vetting with an LLM judge over HTTP (litellm → a local OpenAI-compatible server):
it filters replies by the judge's logprob scores, and a second run makes no judge calls."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from assets.runner import run_experiment
from tests.judge_server import Behaviour, judge_server_fixture  # noqa: F401 - provides `judge_server`
from traitflow.specs.loader import load_project

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT = """\
name: llmjudge
variants:
  chat: toy-chat
traits: [toy/optimism]
judge: {{model: openai/test-judge, api_base: "{url}", max_retries: 1, backoff_s: 0.01, timeout_s: 10}}
extraction:
  position: "prompt[-1]"
  methods: [mean_diff]
  max_new_tokens: 8
  vetting: {{enabled: true, min_per_side: 5}}
"""


@pytest.fixture()
def llm_project(tmp_path, judge_server, monkeypatch) -> Path:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs" / "models", root / "specs" / "models")
    shutil.copytree(REPO / "datasets" / "models", root / "datasets" / "models")
    shutil.copytree(REPO / "datasets" / "traits" / "toy" / "optimism", root / "datasets" / "traits" / "toy" / "optimism")
    (root / "specs" / "experiments").mkdir(parents=True)
    (root / "specs" / "experiments" / "llmjudge.yaml").write_text(EXPERIMENT.format(url=judge_server.url))
    # The judge sees the reply's first words: optimistic replies score high, pessimistic ones low,
    # and the optimistic replies about chess get no confident score at all (mass 0.1 < 0.25).
    judge_server.rule("news! The future of chess", Behaviour(distribution={"foo": 0.9, "85": 0.1}))
    judge_server.rule("Great news! The", Behaviour(distribution={"90": 0.7, "80": 0.3}))
    judge_server.rule("looks hopeless", Behaviour(distribution={"10": 0.6, "20": 0.4}))
    judge_server.default = Behaviour(distribution={"50": 1.0})
    return root


def test_llm_judge_vets_and_second_run_is_free(llm_project, judge_server):
    project = load_project(llm_project)
    instance = dg.DagsterInstance.ephemeral()
    run_experiment(project, "llmjudge", stages=["extraction"], instance=instance)
    first_calls = judge_server.count
    assert first_calls > 0
    vetting = json.loads((llm_project / "experiments/llmjudge/vetting/toy/optimism/chat/vetting.json").read_text())
    assert vetting["judge"] == "openai/test-judge"
    by_side = {"positive": [], "negative": []}
    for item in vetting["items"]:
        by_side[item["side"]].append(item)
    # Scores are the probability-weighted means of the integer tokens: 87 for "Great", 14 for "Sadly".
    scores = {round(i["score"], 6) for i in vetting["items"] if i["score"] is not None}
    assert scores <= {87.0, 14.0, 50.0}
    unscored = [i for i in vetting["items"] if i["score"] is None]
    assert unscored and all(not i["passed"] for i in unscored)
    assert vetting["summary"]["none"] == len(unscored)
    assert vetting["summary"]["passed_positive"] == sum(1 for i in by_side["positive"] if i["score"] == 87.0)
    assert vetting["summary"]["passed_negative"] == sum(1 for i in by_side["negative"] if i["score"] == 14.0)
    from safetensors import safe_open

    with safe_open(str(llm_project / "experiments/llmjudge/activations/toy/optimism/chat/activations.safetensors"), "pt") as f:
        kept = f.get_tensor("labels").numel()
    assert kept == vetting["summary"]["passed_positive"] + vetting["summary"]["passed_negative"] < 100

    # Re-materializing vetting (e.g. after a threshold change) re-scores from the cache: no calls.
    run_experiment(load_project(llm_project), "llmjudge", stages=["vetting"], instance=instance)
    assert judge_server.count == first_calls


def test_unreachable_judge_is_one_line(llm_project, judge_server, capsys, monkeypatch):
    from traitflow.cli import main

    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the instance beside the artifacts, whatever the caller's environment
    spec = llm_project / "specs" / "experiments" / "llmjudge.yaml"
    spec.write_text(spec.read_text().replace(judge_server.url, "http://127.0.0.1:9"))
    code = main(["run", "llmjudge", "--root", str(llm_project), "--stages", "extraction"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unreachable" in err and "sk-test" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_blocked_trait_stops_only_its_own_chain(llm_project, judge_server, capsys):
    """The check is recorded per partition: formality's replies get no confident score, so its
    `min_per_side` fails and its chain stops, while optimism's goes on in the same runs. Projections
    leave formality out (and say so); a run from the UI over both traits skips formality's
    partition; and under `automation: {on_change: materialize}` an edit of optimism re-runs its
    chain and the projections, while formality's missing vectors hold nothing back."""
    from assets import build_defs
    from tests.test_incremental import automate  # the same tick loop

    for folder in (("traits", "toy", "formality"), ("inference", "toy")):
        shutil.copytree(REPO / "datasets" / Path(*folder), llm_project / "datasets" / Path(*folder))
    spec = llm_project / "specs" / "experiments" / "llmjudge.yaml"
    spec.write_text(spec.read_text().replace("traits: [toy/optimism]", "traits: [toy/optimism, toy/formality]")
                    + "steering: {search: {steps: 1, questions: 1, max_new_tokens: 4}}\n"
                    + "inference: {variants: [chat], prompt_sets: [toy/general], max_new_tokens: 4}\n"
                    + "automation: {on_change: materialize}\n")
    instance = dg.DagsterInstance.ephemeral()
    run_experiment(load_project(llm_project), "llmjudge", stages=["all"], instance=instance)
    assert "skipping toy/formality's chain: vetting/min_per_side failed" in capsys.readouterr().out

    check = dg.AssetCheckKey(dg.AssetKey(["llmjudge", "vetting"]), "min_per_side")
    status = {i.partition_key: i.latest_execution_status.value
              for i in instance.event_log_storage.get_asset_check_partition_info([check])}
    assert status == {"toy/optimism|chat": "SUCCEEDED", "toy/formality|chat": "FAILED"}
    activations = dg.AssetKey(["llmjudge", "activations"])
    assert instance.get_materialized_partitions(activations) == {"toy/optimism|chat"}
    store = llm_project / "experiments" / "llmjudge"
    assert not (store / "activations" / "toy" / "formality").exists()
    projections = json.loads((store / "projections/toy/general/chat/projections.json").read_text())
    assert projections["skipped_traits"] == ["toy/formality"] and set(projections["traits"]) == {"toy/optimism"}

    # A run from the UI over both traits (one step, a partition range) skips formality's partition
    # and still does optimism's: one failing trait no longer fails the others.
    defs = build_defs(load_project(llm_project))
    keys = defs.resolve_assets_def(activations).partitions_def.get_partition_keys()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[activations], instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]})
    assert result.success
    events = {m.partition: m.metadata for m in result.asset_materializations_for_node("llmjudge__activations")}
    assert set(events) == {"toy/optimism|chat", "toy/formality|chat"}
    assert "vetting/min_per_side failed" in events["toy/formality|chat"]["skipped"].value
    assert "skipped" not in events["toy/optimism|chat"]
    assert not (store / "activations" / "toy" / "formality").exists()

    # Automation: edit optimism, observe it as the dataset sensor would, and tick until done.
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    path = llm_project / "datasets/traits/toy/optimism/positive.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace('"prompt": "', '"prompt": "Honestly, ', 1), *lines[1:]]) + "\n")
    defs = build_defs(load_project(llm_project))
    defs.resolve_job_def("llmjudge_observe_trait_datasets").execute_in_process(instance=instance)
    done = automate(defs, instance, first.cursor, experiment="llmjudge")
    assert done["responses"] == {"toy/optimism|chat"} and done["best_vector"] == {"toy/optimism"}
    assert done["projections"] == {"toy/general|chat"}
    assert all("toy/formality" not in p for parts in done.values() for p in parts if p is not None)  # None: summary
