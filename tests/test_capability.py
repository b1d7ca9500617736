"""The `benchmark` asset on the toy demo: known answers, validation, the report, metadata and the
memory budget. (The scoring engine itself: tests/test_capability_engine.py.)"""

import json
import shutil
import typing
from pathlib import Path

import pytest

from traitflow.artifacts import Benchmark
from traitflow.cli import main
from traitflow.specs.loader import load_project
from traitflow.stages.capability import MEMORY_BUDGET_ENV, run_benchmark
from traitflow.stages.context import StageContext

REPO = Path(__file__).resolve().parents[1]


def record(toy_demo, key: str) -> dict:
    project = load_project(toy_demo["root"], experiments=["demo"])
    return Benchmark.read(StageContext.create(project, "demo").store, "demo", key)


def test_the_spec_knows_the_engines_benchmarks():
    from traitflow.capability.items import BENCHMARKS
    from traitflow.specs.models import BenchmarkName

    assert typing.get_args(BenchmarkName) == tuple(BENCHMARKS)


def test_toy_multiple_choice_known_answers(toy_demo):
    """The toy model knows the right replies; steering optimism down costs exactly the optimistic items."""
    rec = record(toy_demo, "arc_easy/chat")
    kinds = {json.loads(line)["id"]: json.loads(line)["kind"] for line in
             (toy_demo["root"] / "datasets/benchmarks/toy/mc.jsonl").read_text().splitlines()}
    base, steered, ablated = (rec["conditions"][c] for c in ("baseline", "steer toy/optimism -best", "ablate toy/refusal"))
    assert rec["n"] == 80 and base["n"] == 80
    assert base["ci95"][0] > 0.5, base  # well above chance (1/4)

    def accuracy(condition: str, kind: str) -> float:
        rows = [p for p in rec["predictions"] if kinds[p["id"]] == kind]
        return sum(p["pred"][condition] == p["label"] for p in rows) / len(rows)

    assert accuracy("baseline", "optimistic") >= 0.8
    assert accuracy("steer toy/optimism -best", "optimistic") <= accuracy("baseline", "optimistic") - 0.5
    assert accuracy("steer toy/optimism -best", "topic") >= accuracy("baseline", "topic") - 0.2  # the topic is still known
    assert steered["accuracy"] < base["ci95"][0]
    assert abs(ablated["accuracy"] - base["accuracy"]) <= 0.1
    # The tax, paired on the same items: the steer's excludes 0, the ablation's is small.
    assert base["delta"] is None and base["delta_ci95"] is None
    assert steered["delta"] == pytest.approx(steered["accuracy"] - base["accuracy"])
    assert steered["delta_ci95"][0] <= steered["delta"] <= steered["delta_ci95"][1] < 0
    assert abs(ablated["delta"]) <= 0.1 and ablated["delta_ci95"][1] - ablated["delta_ci95"][0] < base["ci95"][1] - base["ci95"][0]
    # Each item's stored prediction is the argmax of its stored log-probs.
    for p in rec["predictions"]:
        for condition, logprobs in p["logprobs"].items():
            assert p["pred"][condition] == max(range(len(logprobs)), key=logprobs.__getitem__)


def test_ablating_refusal_keeps_toy_ce_and_steering_it_hard_does_not(toy_demo):
    rec = record(toy_demo, "ce_loss/chat")
    base, ablated, steered = (rec["conditions"][c] for c in ("baseline", "ablate toy/refusal", "steer toy/refusal best"))
    assert base["kl"] == 0.0 and base["ce"] < 3.0
    assert abs(ablated["ce"] - base["ce"]) < 0.1 and ablated["kl"] < 0.1
    assert steered["ce"] > base["ce"] + 0.3 and steered["kl"] > 1.0


def test_report_json_has_the_benchmarks(toy_demo):
    benchmarks = toy_demo["report"]["benchmarks"]
    assert set(benchmarks) == {"arc_easy", "ce_loss"}
    row = benchmarks["arc_easy"]["chat"]["baseline"]
    assert set(row) == {"accuracy", "ci95", "delta", "delta_ci95", "n", "ce", "kl"} and row["ce"] is None
    steered = benchmarks["arc_easy"]["chat"]["steer toy/optimism -best"]
    assert steered["delta"] < 0 and len(steered["delta_ci95"]) == 2
    assert benchmarks["ce_loss"]["chat"]["ablate toy/refusal"]["accuracy"] is None


def test_benchmark_metadata_links_the_viewer_and_tables_each_condition(toy_demo):
    import dagster as dg

    instance = toy_demo["instance"]
    event = instance.fetch_materializations(dg.AssetKey(["demo", "benchmark"]), limit=10).records
    by_partition = {r.asset_materialization.partition: r.asset_materialization.metadata for r in event}
    metadata = by_partition["arc_easy/chat"]
    assert metadata["viewer"].value.endswith("/demo/benchmarks?benchmark=arc_easy&variant=chat")
    rows = [r.data for r in metadata["conditions"].value.records]
    assert [r["condition"] for r in rows] == ["baseline", "steer toy/optimism -best", "ablate toy/refusal"]
    assert rows[0]["accuracy"] == record(toy_demo, "arc_easy/chat")["conditions"]["baseline"]["accuracy"]
    assert "data:image/png;base64," in metadata["chart"].value


def test_a_memory_budget_halves_the_batch_and_changes_nothing(toy_demo, monkeypatch):
    project = load_project(toy_demo["root"], experiments=["demo"])
    before = record(toy_demo, "ce_loss/chat")
    lines: list[str] = []
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "8")  # one paragraph takes ~3 MB: a few fit, not a whole batch
    run_benchmark(StageContext.create(project, "demo", log=lines.append), "ce_loss/chat")
    assert any(line.startswith("out of memory at batch size") for line in lines), lines
    after = record(toy_demo, "ce_loss/chat")
    for condition, row in before["conditions"].items():
        assert after["conditions"][condition]["ce"] == pytest.approx(row["ce"], abs=1e-5)
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(Exception, match=f"{MEMORY_BUDGET_ENV} must be a positive number"):
        run_benchmark(StageContext.create(project, "demo"), "ce_loss/chat")


BAD = [
    ("{name: made_up}", "benchmarks[0].name", "expected 'hellaswag'"),
    ("{name: mmlu, conditions: [baseline, {steer: toy/nope, coef: -1}]}", "benchmarks[0].conditions[1]",
     "names trait 'toy/nope'"),
    ("{name: mmlu, conditions: [{steer: toy/optimism, coef: lots}]}", "benchmarks[0].conditions",
     "coef: must be a finite number, best or -best"),
    ("{name: mmlu, conditions: [{ablate: toy/optimism, coef: 1}]}", "benchmarks[0].conditions", "coef: Extra inputs"),
    ("{name: hellaswag, source: ../elsewhere.jsonl}", "benchmarks[0].source", "without '..'"),
    ("{name: mmlu, conditions: [baseline, {steer: toy/optimism, coef: 8}, {steer: toy/optimism, coef: 8.0}]}",
     "benchmarks[0].conditions[2]", "repeats 'steer toy/optimism 8'"),
    ("{name: hellaswag, source: datasets/missing.jsonl}", "benchmarks[0].source", "does not exist"),
]


@pytest.mark.parametrize(("entry", "field", "message"), BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_benchmark_specs_are_one_line_validate_errors(tmp_path, capsys, entry, field, message):
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets", ignore=shutil.ignore_patterns("*.safetensors"))
    demo = (root / "specs/experiments/demo.yaml").read_text()
    head, _, tail = demo.partition("benchmarks:")
    tail = tail[tail.index("storage:"):]
    (root / "specs/experiments/demo.yaml").write_text(f"{head}benchmarks:\n  - {entry}\n{tail}")
    assert main(["validate", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    line = next(li for li in err.splitlines() if field in li)
    assert f"demo.yaml:{head.count(chr(10)) + 2}: {field}" in line and message in line, err


def test_editing_a_benchmark_source_changes_its_code_version(tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(REPO / "specs", root / "specs")
    shutil.copytree(REPO / "datasets", root / "datasets", ignore=shutil.ignore_patterns("*.safetensors"))
    before = load_project(root, experiments=["demo"]).experiments["demo"]
    versions = {asset: before.code_version(asset) for asset in ("benchmark", "best_vector")}  # computed on demand: now
    items = root / "datasets/benchmarks/toy/mc.jsonl"
    items.write_text(items.read_text().replace("Tell me", "Please tell me", 1))
    after = load_project(root, experiments=["demo"]).experiments["demo"]
    assert after.code_version("benchmark") != versions["benchmark"]
    assert after.code_version("best_vector") == versions["best_vector"]  # nothing else moves
