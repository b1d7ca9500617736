"""traitflow/artifacts.py: one class per artifact, versioned JSON, a read-only handle that needs no
model, and the CMA-ES refinement read by name rather than merged into the extracted vectors."""

import json
import shutil

import pytest

from traitflow.artifacts import ARTIFACTS, SCHEMA_VERSION, Artifacts, BestVector, CmaEs, ExtractionEval, Steering, Vectors
from traitflow.errors import TraitflowError
from traitflow.graph import ASSETS
from traitflow.store import ArtifactStore


def test_every_asset_has_a_class_with_the_tables_file_and_partition_folders(tmp_path):
    store = ArtifactStore(tmp_path)
    assert set(ARTIFACTS) == {r.name for r in ASSETS}
    for r in ASSETS:
        assert ARTIFACTS[r.name].file == r.artifact
    assert Vectors.path(store, "e", "toy/optimism", "chat") == tmp_path / "e/vectors/toy/optimism/chat/vectors.safetensors"
    assert BestVector.path(store, "e", "toy/optimism") == tmp_path / "e/best_vector/toy/optimism/best_vector.json"
    assert ARTIFACTS["calibration"].path(store, "e", "chat") == tmp_path / "e/calibration/chat/calibration.json"
    assert ARTIFACTS["projections"].path(store, "e", "toy/general", "chat") == \
        tmp_path / "e/projections/toy/general/chat/projections.json"
    assert ARTIFACTS["variant_diff"].path(store, "e", "a_vs_b/toy/general") == \
        tmp_path / "e/variant_diff/a_vs_b/toy/general/variant_diff.json"
    assert ARTIFACTS["summary"].path(store, "e") == tmp_path / "e/summary/summary.json"  # one per experiment
    assert Steering.results_log(store, "e", "t/x", "chat") == tmp_path / "e/steering/t/x/chat/results.jsonl"
    assert CmaEs.vector_path(store, "e", "t/x", "chat") == tmp_path / "e/cma_es/t/x/chat/vectors.safetensors"


def test_json_artifacts_carry_a_schema_version_and_refuse_a_newer_one(tmp_path):
    arts = Artifacts(ArtifactStore(tmp_path), "e")
    record = {"trait": "t/x", "variant": "chat", "tie_break": "x", "best": {}, "scores": []}
    path = arts.write(ExtractionEval, record, "t/x", "chat")
    on_disk = json.loads(path.read_text())
    assert on_disk == {"schema_version": SCHEMA_VERSION, **record}
    assert "schema_version" not in record  # the caller's dict is left alone
    assert arts.read(ExtractionEval, "t/x", "chat") == on_disk

    path.write_text(json.dumps(record))  # written before schema_version existed: read as version 1
    assert arts.read(ExtractionEval, "t/x", "chat") == record

    path.write_text(json.dumps({**record, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(TraitflowError) as error:
        arts.read(ExtractionEval, "t/x", "chat")
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "newer" in message


def test_a_missing_artifact_is_one_line_naming_it(tmp_path):
    arts = Artifacts(ArtifactStore(tmp_path), "e")
    assert arts.read_optional(BestVector, "t/x") is None and not arts.exists(BestVector, "t/x")
    with pytest.raises(TraitflowError, match="best_vector.json: artifact missing"):
        arts.read(BestVector, "t/x")


def test_report_reads_artifacts_without_any_model(toy_demo, monkeypatch):
    """`traitflow report` uses a read-only handle: no model loader exists on it, and none is called."""
    from traitflow.model.loading import MODEL_CACHE
    from traitflow.report import build_report
    from traitflow.stages.context import ReadContext

    def no_model(*args, **kwargs):
        raise AssertionError("report must not load a model")

    monkeypatch.setattr(MODEL_CACHE, "get", no_model)
    reader = ReadContext.create(toy_demo["project"], "demo")
    assert not hasattr(reader, "load_model")
    report = build_report(toy_demo["project"], "demo")
    assert report == toy_demo["report"]
    assert report["traits"]["toy/optimism"]["steering"]["delta"] >= 30


@pytest.fixture(scope="module")
def cma_monitored(toy_demo, tmp_path_factory):
    """The toy demo with `inference.method: cma_es`, on optimism (the trait the demo refines)."""
    from traitflow.specs.loader import load_project

    root = tmp_path_factory.mktemp("cma_monitored")
    shutil.copytree(toy_demo["root"] / "specs", root / "specs")
    shutil.copytree(toy_demo["root"] / "datasets", root / "datasets")
    shutil.copytree(toy_demo["root"] / "experiments", root / "experiments",
                    ignore=shutil.ignore_patterns("projections"))
    spec = root / "specs/experiments/demo.yaml"
    text = spec.read_text().replace("traits: [toy/*]", "traits: [toy/optimism]")
    text = text[:text.index("benchmarks:")] + text[text.index("storage:"):]  # they name the traits left out
    spec.write_text(text.replace('  position: "response[:5]"\n  layers: best,best+2',
                                 '  position: "prompt[-1]"\n  method: cma_es\n  layers: best,best+2'))
    assert "method: cma_es" in spec.read_text()
    record = json.loads((root / "experiments/demo/cma_es/toy/optimism/chat/cma_es.json").read_text())
    return {"root": root, "project": load_project(root, experiments=["demo"]), "cma": record}


def test_inference_method_cma_es_reads_the_refinement_by_name(cma_monitored):
    from traitflow.artifacts import Projections
    from traitflow.stages.context import StageContext
    from traitflow.stages.inference import run_projections
    from traitflow.stages.which_vector import load_vectors, monitored_vector

    ctx = StageContext.create(cma_monitored["project"], "demo", log=lambda line: None)
    layer = cma_monitored["cma"]["layer"]
    assert monitored_vector(ctx, "toy/optimism") == ("prompt[-1]", "residual", "cma_es", layer)
    # The extracted vectors do not hold it (no back-edge from cma_es into vectors/extraction_eval) ...
    assert not [k for k in load_vectors(ctx, "toy/optimism", "chat").vectors if k[2] == "cma_es"]
    # ... yet projections monitor with it, at its one layer.
    run_projections(ctx, "toy/general", "chat")
    record = ctx.artifacts.read(Projections, "toy/general", "chat")
    assert record["traits"]["toy/optimism"]["method"] == "cma_es"
    assert [int(x) for x in record["traits"]["toy/optimism"]["layers"]] == [layer]


def test_live_monitor_uses_the_refinement_for_inference_method_cma_es(cma_monitored):
    import torch

    from traitflow.monitor.live import _monitors
    from traitflow.stages.context import ReadContext

    reader = ReadContext.create(cma_monitored["project"], "demo")
    (monitor,) = _monitors(reader, ["toy/optimism"])
    assert (monitor.method, monitor.layer) == ("cma_es", cma_monitored["cma"]["layer"])
    refined = CmaEs.read_vectors(reader.store, "demo", "toy/optimism", "chat")
    assert torch.equal(monitor.vector, refined.vector("prompt[-1]", "residual", "cma_es", monitor.layer))
    assert monitor.midpoint == 0.0  # a refinement has no class midpoint
